"""One feature definition: per-batch (online) equals whole-history (offline); values match their meaning."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.entity_state import EntityStates
from shared.feature_scaler import FeatureScaler
from shared.streams.transactions.features import (
    COUNTRY_HISTORY,
    FEATURE_NAMES,
    NO_HISTORY_GAP_S,
    TransactionColumns,
    advance_profiles,
)
from shared.streams.transactions.profiles import (
    KNOWN_COUNTRIES,
    KNOWN_IPS,
    PROFILE_LAYOUT,
    country_codes,
    empty_profiles,
    ip_hashes,
)
from shared.streams.transactions.synthetic import AnomalyKind, GeneratorSpec, generate_transactions


def columns_of(data) -> TransactionColumns:  # type: ignore[no-untyped-def]
    return data.transaction_columns()


def feature(rows: np.ndarray, name: str) -> np.ndarray:
    return rows[:, FEATURE_NAMES.index(name)]


@pytest.fixture(scope="module")
def data():  # type: ignore[no-untyped-def]
    return generate_transactions(GeneratorSpec(users=1_500, events=30_000, seed=4))


def run_in_batches(cols: TransactionColumns, sizes: list[int]) -> np.ndarray:
    profiles = empty_profiles()
    rows, start = [], 0
    for size in sizes:
        if start >= len(cols):
            break
        features, after = advance_profiles(profiles, cols.take(np.arange(start, min(start + size, len(cols)))))
        # Profiles go through the same bytes the Redis store keeps.
        stored = EntityStates.from_blobs(PROFILE_LAYOUT, after.keys.tolist(), after.blobs())
        kept = ~np.isin(profiles.keys, stored.keys)  # users not in this batch keep their profile
        users = np.concatenate([profiles.keys[kept], stored.keys])
        profiles = EntityStates.of(PROFILE_LAYOUT, users, np.concatenate([profiles.records[kept], stored.records]))
        rows.append(features)
        start += size
    return np.vstack(rows)


def test_online_batches_reproduce_offline_features_exactly(data) -> None:  # type: ignore[no-untyped-def]
    cols = columns_of(data)
    offline, _ = advance_profiles(empty_profiles(), cols)
    online = run_in_batches(cols, [1] * 50 + [7] * 50 + [1000] * 29 + [len(cols) - 29_400])
    np.testing.assert_allclose(online, offline, rtol=1e-9, atol=1e-9)


@given(st.lists(st.integers(min_value=1, max_value=400), min_size=1, max_size=12))
def test_any_batching_gives_the_same_features(sizes: list[int]) -> None:
    small = generate_transactions(GeneratorSpec(users=40, events=sum(sizes), seed=len(sizes)))
    cols = columns_of(small)
    offline, _ = advance_profiles(empty_profiles(), cols)
    np.testing.assert_allclose(run_in_batches(cols, sizes), offline, rtol=1e-9, atol=1e-9)


def most_recent_distinct_reference(users: list[str], values: list[str], slots: int) -> list[bool]:
    """One event at a time: is the value among the user's `slots` most recent distinct non-empty values?"""
    recent: dict[str, list[str]] = {}
    answers = []
    for user, value in zip(users, values, strict=True):
        kept = recent.setdefault(user, [])
        answers.append(value in kept)
        if value:
            recent[user] = [value, *(v for v in kept if v != value)][:slots]
    return answers


@given(
    st.lists(
        st.tuples(st.sampled_from("ab"), st.integers(0, 11), st.sampled_from(["", "DE", "FR", "IT", "ES", "PL", "NL"])),
        min_size=1,
        max_size=80,
    ),
    st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=8),
)
def test_new_ip_and_country_follow_the_profiles_recent_values_under_any_batching(events, sizes) -> None:  # type: ignore[no-untyped-def]
    # Users with more distinct IPs and countries than a profile keeps (8 and 4), revisiting old ones.
    users, ips, countries = [e[0] for e in events], [f"10.0.0.{e[1]}" for e in events], [e[2] for e in events]
    cols = TransactionColumns.from_arrays(
        user_id=users, amount=[10.0] * len(events), timestamp_s=np.arange(len(events)) * 60.0, ip=ips,
        transaction_type=["purchase"] * len(events), channel=["web"] * len(events),
        segment=["tight-passive"] * len(events), country=countries,
    )  # fmt: skip
    offline, _ = advance_profiles(empty_profiles(), cols)
    earlier = [users[:i].count(u) for i, u in enumerate(users)]
    named = [any(c for u, c in zip(users[:i], countries[:i], strict=True) if u == users[i]) for i in range(len(users))]
    ip_known = most_recent_distinct_reference(users, ips, KNOWN_IPS)
    country_known = most_recent_distinct_reference(users, countries, KNOWN_COUNTRIES)
    assert feature(offline, "new_ip_for_user").tolist() == [
        float(not known and n > 0) for known, n in zip(ip_known, earlier, strict=True)
    ]
    assert feature(offline, "new_country_for_user").tolist() == [
        float(bool(c) and not known and was_named and n >= COUNTRY_HISTORY)
        for c, known, was_named, n in zip(countries, country_known, named, earlier, strict=True)
    ]
    sizes = [*sizes, len(events)]  # the last batch takes whatever is left
    np.testing.assert_allclose(run_in_batches(cols, sizes), offline, rtol=1e-9, atol=1e-9)


def test_user_features_mean_what_their_names_say() -> None:
    cols = TransactionColumns.from_arrays(
        user_id=["a", "a", "a", "b"], amount=[10.0, 30.0, 500.0, 7.0], timestamp_s=[0.0, 600.0, 900.0, 100.0],
        ip=["1.1.1.1", "1.1.1.1", "9.9.9.9", "2.2.2.2"], transaction_type=["purchase"] * 4, channel=["web"] * 4,
        segment=["tight-passive"] * 4,
    )  # fmt: skip
    rows, after = advance_profiles(empty_profiles(), cols)
    np.testing.assert_allclose(np.expm1(feature(rows, "user_tx_count_log")), [0, 1, 2, 0])
    np.testing.assert_allclose(np.expm1(feature(rows, "user_mean_amount_log")), [0, 10, 20, 0])
    np.testing.assert_allclose(np.expm1(feature(rows, "user_max_amount_log")), [0, 10, 30, 0])
    np.testing.assert_allclose(
        np.expm1(feature(rows, "seconds_since_prev_log")), [NO_HISTORY_GAP_S, 600, 300, NO_HISTORY_GAP_S]
    )
    assert feature(rows, "new_ip_for_user").tolist() == [0, 0, 1, 0]
    assert feature(rows, "user_tx_last_hour").tolist() == [0, 1, 2, 0]
    history = np.log1p([10.0, 30.0])
    shrunk_variance = (2 * history.var() + 3 * 0.25) / (2 + 3)
    assert feature(rows, "amount_z_vs_user")[2] == pytest.approx(
        (np.log1p(500) - history.mean()) / np.sqrt(shrunk_variance)
    )
    assert feature(rows, "new_ip_with_history").tolist() == pytest.approx([0, 0, np.log1p(2), 0])
    a = after.records[after.keys.tolist().index("a")]
    assert a["count"] == 3 and a["amount_max"] == 500
    assert a["ips"].tolist() == [*ip_hashes(np.array(["9.9.9.9", "1.1.1.1"], dtype=object)).tolist(), 0, 0, 0, 0, 0, 0]
    np.testing.assert_array_equal(a["recent_ts"], [900.0, 600.0, 0.0, np.nan, np.nan])


def test_a_new_country_counts_only_against_countries_the_user_named_before() -> None:
    countries = ["DE", "DE", "FR", "", "DE", "", "NG", "RU", "NG", "PL", "DE", "RU"]
    cols = TransactionColumns.from_arrays(
        user_id=["a"] * 5 + ["b"] * 4 + ["c"] * 3, amount=[10.0] * 12, timestamp_s=np.arange(12.0) * 60,
        ip=["1.1.1.1"] * 12, transaction_type=["purchase"] * 12, channel=["web"] * 12, segment=["tight-passive"] * 12,
        country=countries,
    )  # fmt: skip
    rows, after = advance_profiles(empty_profiles(), cols)
    # a: FR is new after DE, DE; "" names none; DE again is known. b: NG is the first country it names, RU
    # is new. c: one event (in PL) is too little history for DE to be news; RU after PL and DE is.
    assert feature(rows, "new_country_for_user").tolist() == [0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 1]
    b = after.records[after.keys.tolist().index("b")]
    assert b["countries"].tolist() == [*country_codes(np.array(["NG", "RU"], dtype=object)).tolist(), 0, 0]
    # Without a country column nothing is new: the feature needs the events to name one.
    plain = TransactionColumns.from_arrays(
        **{
            f: getattr(cols, f)
            for f in ("user_id", "amount", "timestamp_s", "ip", "transaction_type", "channel", "segment")
        }
    )
    assert not feature(advance_profiles(empty_profiles(), plain)[0], "new_country_for_user").any()
    # None names no country, as an event without the field does (not the country "None").
    fields = ("user_id", "amount", "timestamp_s", "ip", "transaction_type", "channel", "segment")
    named = TransactionColumns.from_arrays(**{f: getattr(plain, f)[:2] for f in fields}, country=[None, "DE"])
    assert named.country.tolist() == ["", "DE"] and country_codes(named.country)[0] == 0


def test_injected_anomalies_stand_out_on_the_features_built_for_them(data) -> None:  # type: ignore[no-untyped-def]
    rows, _ = advance_profiles(empty_profiles(), columns_of(data))
    normal = ~data.is_anomaly
    expectations = {
        AnomalyKind.AMOUNT_SPIKE: "amount_z_vs_user",
        AnomalyKind.BURST: "user_tx_last_hour",
        AnomalyKind.NEW_IP_COUNTRY: "new_ip_for_user",
        AnomalyKind.UNUSUAL_HOUR: "hour_off_user_habit",
    }
    for kind, name in expectations.items():
        values = feature(rows, name)
        assert values[data.anomaly_kind == kind].mean() > values[normal].mean() + values[normal].std()
    # Normal events are in their user's home country; a new_ip_country anomaly after two events is abroad.
    new_country = feature(rows, "new_country_for_user")
    assert new_country[normal].mean() < 0.0002
    with_history = (data.anomaly_kind == AnomalyKind.NEW_IP_COUNTRY) & (feature(rows, "user_tx_count_log") > 1.0)
    assert new_country[with_history].all()


def test_scaler_is_fitted_on_training_rows_only_and_survives_constant_columns() -> None:
    train = np.column_stack([np.arange(10.0), np.zeros(10)])
    scaler = FeatureScaler().fit(train)
    scaled = scaler.transform(np.array([[4.5, 3.0]]))
    assert scaled[0, 0] == pytest.approx(0.0) and np.isfinite(scaled).all()


def test_the_hour_off_habit_is_the_circular_deviation_in_units_of_the_users_shrunk_circular_variance() -> None:
    ten, twenty_two = 10 * 3600.0, 22 * 3600.0
    cols = TransactionColumns.from_arrays(
        user_id=["a"] * 5, amount=[10.0] * 5, timestamp_s=[ten, 86400 + ten, 2 * 86400 + ten, 3 * 86400 + ten,
                                                           3 * 86400 + twenty_two],
        ip=["1.1.1.1"] * 5, transaction_type=["purchase"] * 5, channel=["web"] * 5, segment=["tight-passive"] * 5,
    )  # fmt: skip
    rows, _ = advance_profiles(empty_profiles(), cols)
    # Four earlier events at 10:00 (R = 1): variance shrunk to (4 * 0 + 3 * 0.5) / 7; 22:00 deviates by 1 - cos(pi).
    assert feature(rows, "hour_off_user_habit").tolist() == pytest.approx([0, 0, 0, 0, 2 / (1.5 / 7)])
