"""The money: ledger, spend caps (see the money issue)."""
