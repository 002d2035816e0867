"""The bundled example (support-bot) and the demo that runs the whole loop on it."""
