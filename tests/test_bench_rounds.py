"""The benchmarks' own round loops, now all through ``measure.interleaved``: what each
returns per engine and round (shapes and order, never speed)."""

from __future__ import annotations

from gpuknn.benchmark import distributed, measure, multimodel


def test_interleaved_calls_every_operation_once_a_round_in_a_seeded_order():
    calls: list[str] = []
    operations = {name: (lambda name=name: calls.append(name) or len(calls))
                  for name in ("a", "b", "c")}
    samples = measure.interleaved(operations, 4, seed=[7, 1])
    assert {name: len(values) for name, values in samples.items()} == {"a": 4, "b": 4, "c": 4}
    rounds = [calls[i:i + 3] for i in range(0, 12, 3)]
    assert all(sorted(one) == ["a", "b", "c"] for one in rounds)  # each once a round
    assert len({tuple(one) for one in rounds}) > 1  # the order changes between rounds
    again: list[str] = []
    measure.interleaved({name: (lambda name=name: again.append(name)) for name in "abc"}, 4,
                        seed=[7, 1])
    assert again == calls  # the same seed, the same orders


def test_distributed_rounds_give_rows_per_second_of_every_engine():
    rows = {"one": 1_000, "two": 2_000}
    rates = distributed.rounds({name: (lambda n=n: n) for name, n in rows.items()}, 2,
                               warm_up=1)
    assert set(rates) == set(rows) and all(len(values) == 2 for values in rates.values())
    assert all(rate > 0 for values in rates.values() for rate in values)


def test_multimodel_alternation_gives_each_call_its_own_index():
    seen: dict[str, list[int]] = {"multi": [], "single": []}
    samples = multimodel._alternating(
        {name: (lambda i, name=name: seen[name].append(i) or float(i)) for name in seen},
        5, seed=3)
    assert seen == {"multi": [0, 1, 2, 3, 4], "single": [0, 1, 2, 3, 4]}
    assert samples == {"multi": [0.0, 1.0, 2.0, 3.0, 4.0], "single": [0.0, 1.0, 2.0, 3.0, 4.0]}
