"""Shared by the peer scripts: one result from several alternating rounds of one measurement."""


def combine(rs):
    """The median of the rounds' medians, the best of their best times, and the round medians
    (`round_medians_s`). A failed round (None, or a dict without `median_s`) is returned as is."""
    bad = [r for r in rs if r is None or "median_s" not in r]
    if bad:
        return bad[0]
    if len(rs) == 1:
        return rs[0]
    meds = sorted(r["median_s"] for r in rs)
    out = dict(rs[0])
    out["median_s"] = meds[len(meds) // 2]
    out["best_s"] = min(r["best_s"] for r in rs)
    out["round_medians_s"] = [r["median_s"] for r in rs]
    return out
