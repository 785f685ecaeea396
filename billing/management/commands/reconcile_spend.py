"""manage.py reconcile_spend: the ledger against what RunPod says it billed (billing/reconcile.py).

Exit status 0 when every figure agrees within $0.01, 2 when something differs or a provider
could not be read: a cron job can alert on it.
"""
import json
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone

from django.core.management.base import BaseCommand, CommandError

from billing.reconcile import reconcile


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"not a date or time: {text!r} (use YYYY-MM-DD or YYYY-MM-DDTHH:MM)")
    return moment if moment.tzinfo else moment.replace(tzinfo=dt_timezone.utc)


class Command(BaseCommand):
    help = "Compare the ledger with RunPod's billing records; --record writes serverless worker overhead."

    def add_arguments(self, parser):
        parser.add_argument("--since", help="start, UTC (default: the first of this month)")
        parser.add_argument("--until", help="end, UTC (default: now)")
        parser.add_argument("--days", type=int, help="the last N days instead of --since")
        parser.add_argument("--record", action="store_true",
                            help="record the serverless worker time no job was charged for, once per ended day")
        parser.add_argument("--json", action="store_true", help="print the report as JSON")

    def handle(self, *args, **options):
        now = datetime.now(dt_timezone.utc)
        end = _moment(options["until"]) if options["until"] else now
        if options["days"] is not None:
            if options["days"] <= 0:
                raise CommandError("--days must be a positive number of days")
            start = end - timedelta(days=options["days"])
        elif options["since"]:
            start = _moment(options["since"])
        else:
            start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        if start >= end:
            raise CommandError("--since must be before --until")
        report = reconcile(start=start, end=end, record=options["record"], now=now)
        if options["json"]:
            self.stdout.write(json.dumps(_as_json(report), indent=2))
        else:
            self._print(report)
        if not report.clean:
            raise SystemExit(2)

    def _print(self, report):
        self.stdout.write(f"Reconciliation {report.start:%Y-%m-%d %H:%M} – {report.end:%Y-%m-%d %H:%M} UTC")
        for line in report.lines:
            billed = "n/a" if line.billed is None else f"${line.billed:.6f}"
            difference = "" if line.difference is None else f"  difference ${line.difference:+.6f}"
            flag = "" if line.clean else "  MISMATCH"
            self.stdout.write(f"  {line.provider:18} {line.what}: provider {billed}, ledger ${line.ledger:.6f}"
                              f"{difference}{flag}  ({line.note})")
        for key, amount in report.recorded:
            self.stdout.write(f"  recorded ${amount:.6f} as the installation's ({key})")
        for error in report.errors:
            self.stdout.write(f"  could not read: {error}")
        self.stdout.write("clean" if report.clean else "DIFFERENCES FOUND")


def _as_json(report) -> dict:
    return {"start": report.start.isoformat(), "end": report.end.isoformat(), "clean": report.clean,
            "lines": [{"provider": line.provider, "what": line.what, "note": line.note, "clean": line.clean,
                       "billed": None if line.billed is None else str(line.billed), "ledger": str(line.ledger),
                       "difference": None if line.difference is None else str(line.difference)}
                      for line in report.lines],
            "recorded": [{"key": key, "amount": str(amount)} for key, amount in report.recorded],
            "errors": report.errors}
