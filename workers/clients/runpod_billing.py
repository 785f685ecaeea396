"""RunPod's billing history (REST v1, `GET /billing/pods` and `GET /billing/endpoints`), read
for reconciliation (billing/reconcile.py), never for charging.

Query: `bucketSize` (hour | day | week | month | year), `grouping` (podId | gpuTypeId for pods,
endpointId | podId | gpuTypeId for endpoints), an optional `podId` / `endpointId` filter,
`startTime` / `endTime` (ISO 8601, UTC). Answer: a JSON array of buckets, each
`{"time", "amount" (USD), "timeBilledMs", "diskSpaceBilledGb"?, "podId"? | "endpointId"?,
"gpuTypeId"?}`. RunPod writes these records some time after the usage (allow an hour), so a
reconciliation of the last hour may show RunPod below the ledger.
"""
from collections import defaultdict
from datetime import datetime
from datetime import timezone as dt_timezone
from decimal import Decimal

from .base import BackendError
from .http import Http


def iso(moment: datetime) -> str:
    return moment.astimezone(dt_timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class RunPodBilling:
    def __init__(self, *, api_key: str, base_url: str, timeout: float = 10.0):
        self.http = Http(base_url, "RunPod billing API", timeout=timeout,
                         headers={"Authorization": f"Bearer {api_key}"})

    def pods(self, start: datetime, end: datetime) -> dict[str, Decimal]:
        """USD billed per pod id in [start, end)."""
        return self._by(self._records("/billing/pods", start, end, grouping="podId"), "podId")

    def endpoint(self, endpoint_id: str, start: datetime, end: datetime) -> Decimal:
        """USD billed for one serverless endpoint in [start, end) (its workers' time)."""
        records = self._records("/billing/endpoints", start, end, grouping="endpointId", endpointId=endpoint_id)
        return sum((_amount(r) for r in records if r.get("endpointId") in (None, endpoint_id)), Decimal("0"))

    def _records(self, path: str, start: datetime, end: datetime, **params) -> list:
        query = {"bucketSize": "hour", "startTime": iso(start), "endTime": iso(end), **params}
        records = self.http.json("GET", path, params=query)
        if isinstance(records, dict):  # tolerate an envelope ({"records": [...]}) as well as the bare array
            records = records.get("records") or records.get("billing") or []
        if not isinstance(records, list):
            raise BackendError("RunPod billing API sent something other than a list of records", retryable=True)
        return [r for r in records if isinstance(r, dict)]

    @staticmethod
    def _by(records: list, key: str) -> dict[str, Decimal]:
        totals = defaultdict(Decimal)
        for record in records:
            if record.get(key):
                totals[str(record[key])] += _amount(record)
        return dict(totals)


def _amount(record: dict) -> Decimal:
    try:
        return Decimal(str(record.get("amount") or 0))
    except ArithmeticError:
        raise BackendError(f"RunPod billing API sent an amount that is not a number: {record.get('amount')!r}",
                           retryable=False)
