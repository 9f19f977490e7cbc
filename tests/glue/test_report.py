"""Selection rules of the report (paper §4–5) on hand-made journal records."""

from __future__ import annotations

import statistics

import pytest

from scl_loss.glue.report import build_tables, select


def record(task, regime, loss, lam, tau, sample, val, test, *, shots=20, augment=None, init=None, key=None):
    spec = {
        "task": task,
        "regime": regime,
        "shots": None if regime == "full" else shots,
        "per_class": None,
        "augment": augment,
        "init": init,
        "model": "m",
        "loss": loss,
        "lambda": lam,
        "tau": tau,
        "sample": sample,
    }
    result = {"val_acc": val, "test_acc": test, "test_mcc": test / 2, "test_f1": test / 3}
    return {
        "key": key or f"{task}{regime}{loss}{lam}{tau}{sample}{augment}{init}",
        "spec": spec,
        "result": result,
    }


def test_full_data_picks_combination_by_mean_val_and_reports_best_of_seeds():
    records = [
        # combination A: mean val 0.80, contains the single best val run (0.95)
        record("sst2", "full", "scl", 0.1, 0.1, 0, 0.95, 0.70),
        record("sst2", "full", "scl", 0.1, 0.1, 1, 0.65, 0.90),
        # combination B: mean val 0.85 -> chosen; best-of by val is seed 1 (val 0.9, test 0.88)
        record("sst2", "full", "scl", 0.9, 0.3, 0, 0.80, 0.99),
        record("sst2", "full", "scl", 0.9, 0.3, 1, 0.90, 0.88),
        record("sst2", "full", "ce", None, None, 0, 0.5, 0.5),
    ]
    chosen = {s.loss: s for s in select(records)}
    assert (chosen["scl"].lambda_, chosen["scl"].tau) == (0.9, 0.3)
    assert chosen["scl"].test == pytest.approx(0.88)
    assert chosen["scl"].val == pytest.approx(0.85)
    assert chosen["scl"].test_std is None
    tables = build_tables(select(records))
    assert list(tables) == ["table2"]
    header, rows = tables["table2"].header, tables["table2"].rows
    assert header == ["Loss", "SST-2"]
    assert rows[1] == ["CE+SCL", "88.00 (λ=0.9, τ=0.3)"]


def test_few_shot_uses_top3_by_val_for_choice_and_report():
    vals_a = [0.9, 0.5, 0.5, 0.5, 0.5]  # top-3 mean 0.633
    vals_b = [0.7, 0.7, 0.7, 0.1, 0.1]  # top-3 mean 0.7 -> chosen although A has the best single run
    records = [record("qnli", "fewshot", "scl", 0.3, 0.1, k, v, 0.1 * k) for k, v in enumerate(vals_a)]
    records += [
        record("qnli", "fewshot", "scl", 0.5, 0.7, k, v, 0.6 + 0.01 * k) for k, v in enumerate(vals_b)
    ]
    [sel] = select(records)
    assert (sel.lambda_, sel.tau) == (0.5, 0.7)
    tests = [0.60, 0.61, 0.62]
    assert sel.test == pytest.approx(statistics.fmean(tests))
    assert sel.test_std == pytest.approx(statistics.stdev(tests))
    assert sel.runs == 5
    assert len(sel.used) == 3


def test_noise_and_transfer_go_to_their_tables():
    records = [
        record(
            "sst2",
            "fewshot",
            loss,
            lam,
            0.3 if lam else None,
            k,
            0.5 + k / 10,
            0.6,
            shots=100,
            augment={"file": "a.jsonl", "temperature": 0.3},
        )
        for k in range(3)
        for loss, lam in (("ce", None), ("scl", 0.9))
    ]
    records += [
        record(
            "yelp2", "fewshot", "ce", None, None, k, 0.5, 0.7, shots=None, init={"path": "p", "loss": "scl"}
        )
        for k in range(3)
    ]
    for r in records[-3:]:
        r["spec"]["per_class"] = 20
    tables = build_tables(select(records))
    assert set(tables) == {"table5", "table7"}
    assert tables["table5"].rows[0][:3] == ["SST-2", "100", "0.3"]
    assert tables["table5"].rows[0][-1] == "+0.00"
    assert tables["table7"].rows[0][:3] == ["Yelp-2", "20/class", "SST-2 model (scl)"]


def test_settings_compete_as_combinations_and_splits_never_pool():
    records = []
    for epochs, val in ((3, 0.6), (10, 0.8)):
        for k in range(3):
            r = record("sst2", "fewshot", "ce", None, None, k, val, val - 0.1, key=f"e{epochs}s{k}")
            r["spec"]["settings"] = {"epochs": epochs}
            records.append(r)
    [sel] = select(records)
    assert sel.best_record["spec"]["settings"] == {"epochs": 10}
    assert sel.test == pytest.approx(0.7)
    other = record("sst2", "fewshot", "ce", None, None, 0, 0.99, 0.99, key="other-split")
    other["spec"]["split_seed"] = 1
    assert len(select([*records, other])) == 2  # a separate row, not the winner of the first
