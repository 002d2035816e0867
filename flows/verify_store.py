"""verify-store: re-hash every stored version against its manifest and report what is broken.

Run it:  python -m flows.verify_store        (or: prefect deployment run 'verify-store/daily')
"""

from __future__ import annotations

from prefect import flow, get_run_logger, unmapped
from pydantic import BaseModel, Field

from slmops.config import get_settings
from slmops.errors import IntegrityError
from tasks.store import VersionCheck, list_versions, report_checks, verify_version


class VerifyStoreParams(BaseModel):
    store: str | None = Field(
        None, description="Store URI (s3://bucket/prefix or a directory). Empty: SLMOPS_STORE."
    )
    deep: bool = Field(
        True, description="Re-hash every file (reads everything). Off: check presence and size."
    )
    fail_on_problems: bool = Field(
        True, description="Fail the flow run when any version is damaged, so automations fire."
    )


@flow(name="verify-store", log_prints=True)
def verify_store(params: VerifyStoreParams | None = None) -> list[VersionCheck]:
    """Check that every version in the store is intact: present, right size, right sha256.

    Args:
        params: Which store, how deep to check, and whether damage fails the run.
    """
    params = params or VerifyStoreParams()
    store_uri = params.store or get_settings().store
    logger = get_run_logger()

    found = list_versions(store_uri=store_uri)
    logger.info("verifying %d versions in %s", len(found), store_uri)
    checks: list[VersionCheck] = []
    if found:
        collections, names, versions = (list(col) for col in zip(*found, strict=True))
        futures = verify_version.map(
            store_uri=unmapped(store_uri),
            collection=collections,
            name=names,
            version=versions,
            deep=unmapped(params.deep),
        )
        checks = [f.result() for f in futures]
    logger.info(report_checks(store_uri=store_uri, checks=checks))

    damaged = [c for c in checks if c.problems]
    if damaged and params.fail_on_problems:
        listed = ", ".join(f"{c.collection}/{c.name}@{c.version}" for c in damaged)
        raise IntegrityError(f"{len(damaged)} damaged versions in {store_uri}: {listed}")
    return checks


if __name__ == "__main__":
    verify_store()
