"""Reconciliation: the ledger against what the providers say they billed, where their APIs allow.

- RunPod pods: `GET /billing/pods` by pod id. A pod that ended is in the ledger as its jobs'
  charges plus its idle time, which should equal RunPod's amount (our clock starts when we ask
  for the pod, a second or so before RunPod's, so ours is a little higher). A live pod is not
  settled yet: reported, not compared. A billed pod with no row here is named: it may be
  another use of the account, or one of ours that reconcile_pods has not seen yet (once it has,
  its uptime is in the ledger as "pod-untracked" and compared like the others).
- RunPod serverless: `GET /billing/endpoints` for the endpoint. The ledger charges each job its
  executionTime; RunPod bills worker time from start to stop, so the endpoint's bill is higher by
  the cold starts and idle timeouts around the jobs. That gap is the installation's, and
  `record` writes it to the ledger once per UTC day that has ended (kind idle, against the
  installation's monthly cap), so the ledger's total is the real bill. Beat does this every
  RECONCILE_SPEND_SECONDS for the day before (billing/tasks.py).
- Gemini: the Developer API has no billing or usage endpoint for an API key (usage is in the
  Cloud Billing report of the project); the ledger's Gemini total is reported for comparison by
  hand.

Differences within TOLERANCE per pod or endpoint-day are clean; RunPod writes its records up
to an hour after the usage, so the current hour may show RunPod below the ledger.
"""
import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone
from decimal import Decimal

from django.conf import settings
from django.db.models import Q, Sum

from routing.models import Backend
from workers.clients.base import BackendError
from workers.clients.runpod_billing import RunPodBilling
from workers.pods.models import LIVE, CloudPod

from .ledger import pod_held, record_adjustment, record_idle
from .models import SPENT_KINDS, LedgerEntry
from .pricing import money

TOLERANCE = Decimal("0.01")
RECORD_LAG = timedelta(hours=2)  # a day's RunPod records are complete this long after it ended
SPENT = SPENT_KINDS


@dataclass
class Line:
    provider: str
    what: str
    billed: Decimal | None  # None: the provider's figure is not available
    ledger: Decimal
    note: str = ""
    suspect: bool = False  # a mismatch whatever the amounts (money no row here accounts for)

    @property
    def difference(self) -> Decimal | None:
        return None if self.billed is None else self.billed - self.ledger

    @property
    def clean(self) -> bool:
        return not self.suspect and (self.difference is None or abs(self.difference) <= TOLERANCE)


@dataclass
class Report:
    start: datetime
    end: datetime
    lines: list = field(default_factory=list)
    recorded: list = field(default_factory=list)  # (key, amount) written by record=True
    errors: list = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.errors and all(line.clean for line in self.lines)


def reconcile(*, start: datetime, end: datetime, billing=None, record: bool = False, now=None) -> Report:
    """`billing`: a RunPodBilling (built from the settings when RUNPOD_API_KEY is set)."""
    now = now or datetime.now(dt_timezone.utc)
    report = Report(start=start, end=end)
    if billing is None and settings.RUNPOD_API_KEY:
        billing = RunPodBilling(api_key=settings.RUNPOD_API_KEY, base_url=settings.RUNPOD_REST_BASE_URL,
                                timeout=settings.RUNPOD_HTTP_TIMEOUT)
    if billing is not None:
        for check in (lambda: _pods(report, billing), lambda: _serverless(report, billing, record=record, now=now)):
            try:
                check()
            except BackendError as error:  # one provider's records unreadable: the others still compared
                report.errors.append(error.message)
    gemini = _ledger(Q(backend__kind="gemini"), start, end)
    report.lines.append(Line("gemini", "all Gemini runs", None, gemini,
                             "no billing API for an API key: compare with the project's Cloud Billing report"))
    return report


def _ledger(where: Q, start: datetime, end: datetime) -> Decimal:
    return _ever(where & Q(created_at__gte=start, created_at__lt=end))


def _ever(where: Q) -> Decimal:
    rows = LedgerEntry.objects.filter(where, kind__in=SPENT)
    return rows.aggregate(total=Sum("amount"))["total"] or Decimal("0")


def _pods(report: Report, billing) -> None:
    billed = billing.pods(report.start, report.end)
    rows = {row.runpod_id: row for row in CloudPod.objects.filter(runpod_id__in=list(billed))}
    for pod_id, amount in sorted(billed.items()):
        row = rows.get(pod_id)
        if row is None:
            recorded = _ever(Q(key=f"pod-untracked:{pod_id}"))
            if recorded:  # one of ours that reconcile_pods found untracked, ended and recorded
                report.lines.append(Line("runpod pods", pod_id, amount, recorded, "untracked pod ended by reconcile"))
                continue
            report.lines.append(Line("runpod pods", pod_id, amount, Decimal("0"),
                                     "billed by RunPod, no row here: another use of the account, or untracked",
                                     suspect=True))
            continue
        if row.status in LIVE or row.terminated_at is None:
            report.lines.append(Line("runpod pods", f"{pod_id} ({row.name})", None, pod_held(row.id),
                                     "still running: held so far, settled when it ends"))
            continue
        ledger = _ever(Q(attempt__pod_assignment__pod=row) | Q(key=f"pod-idle:{row.id}"))
        report.lines.append(Line("runpod pods", f"{pod_id} ({row.name})", amount, ledger,
                                 f"{row.jobs_processed} jobs, idle ${row.idle_cost}"))


def _serverless(report: Report, billing, *, record: bool, now) -> None:
    if not settings.RUNPOD_ENDPOINT_ID:
        return
    endpoint = settings.RUNPOD_ENDPOINT_ID
    day = report.start.astimezone(dt_timezone.utc).date()
    last = report.end.astimezone(dt_timezone.utc).date()
    while day <= last:
        start = max(report.start, _midnight(day))
        end = min(report.end, _midnight(day + timedelta(days=1)))
        if start < end:
            _serverless_day(report, billing, endpoint, day, start, end, record=record, now=now)
        day += timedelta(days=1)


def _serverless_day(report, billing, endpoint, day: date, start, end, *, record: bool, now) -> None:
    """One day of the endpoint. RunPod above the ledger: worker time no job was charged for
    (recorded as idle). RunPod below it: calls cut short that the ledger recorded at their
    estimate ("unmatched") but RunPod never billed (corrected, up to what was so recorded)."""
    billed = billing.endpoint(endpoint, start, end)
    overhead_key, correction_key = f"runpod-overhead:{endpoint}:{day}", f"runpod-correction:{endpoint}:{day}"
    runs = Q(backend__kind="runpod") & ~Q(key__in=[overhead_key, correction_key])
    entries = _ledger(runs, start, end)
    settled = _ever(Q(key__in=[overhead_key, correction_key]))
    gap = money(billed - entries - settled)
    whole_day = start == _midnight(day) and end == _midnight(day + timedelta(days=1)) and end + RECORD_LAG <= now
    note = "worker time beyond the jobs' executionTime (cold starts, idle timeout)"
    if record and whole_day and not settled and gap:
        backend = Backend.objects.filter(kind=Backend.Kind.RUNPOD).order_by("id").first()
        unmatched = _ledger(runs & Q(kind=LedgerEntry.Kind.UNMATCHED), start, end)
        if gap > 0 and record_idle(key=overhead_key, amount=gap, backend=backend, day=day,
                                   note=f"RunPod worker time around the jobs of {day}: cold starts, idle timeouts"):
            report.recorded.append((overhead_key, gap))
            settled = gap
        elif gap < 0 and unmatched > 0:
            correction = max(gap, -unmatched)
            if record_adjustment(key=correction_key, amount=correction, backend=backend, day=day,
                                 note=f"runs recorded as unmatched on {day} that RunPod did not bill"):
                report.recorded.append((correction_key, correction))
                settled = correction
    if not settled:
        note += "; not recorded yet"
    report.lines.append(Line("runpod serverless", f"endpoint {endpoint}, {day.isoformat()}", billed, entries + settled,
                             note))


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=dt_timezone.utc)


def reconcile_yesterday(*, now=None) -> Report:
    """What beat runs: yesterday (UTC), recording its serverless overhead once RunPod's records
    are complete, and a warning for every line that does not agree."""
    now = now or datetime.now(dt_timezone.utc)
    today = _midnight(now.astimezone(dt_timezone.utc).date())
    report = reconcile(start=today - timedelta(days=1), end=today, record=True, now=now)
    log = logging.getLogger(__name__)
    for line in report.lines:
        if not line.clean:
            log.warning("reconcile: %s %s: provider $%s, ledger $%s (%s)", line.provider, line.what, line.billed,
                        line.ledger, line.note)
    for error in report.errors:
        log.warning("reconcile: could not read the provider's records: %s", error)
    return report
