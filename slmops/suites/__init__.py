"""The suites: a team's own cases, how each becomes a prompt and is answered, how each answer
is scored, and the statistics over them. The gate (slmops.evaluation) and assess
(slmops.assess) measure with the same ones; the smoke test of a promotion takes its prompts
from them."""
