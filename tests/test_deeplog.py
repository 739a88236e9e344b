"""DeepLog: the numpy forward pass a worker runs equals the Keras model it was trained as, and the detector
finds a key that does not follow its history, inside a pickled (signed) version."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from shared.detectors.deeplog import LOG_FLOOR, DeepLogDetector
from shared.detectors.keras_backend import keras_for_training
from shared.detectors.on_features import OnFeatures
from shared.detectors.robust_zscore import RobustZScoreDetector
from shared.feature_scaler import FeatureScaler


def sessions(count: int, seed: int) -> np.ndarray:
    """Rows of (3 previous keys, key) from sessions that walk 1 → 2 → 3 → (4 or 5) → 6."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(count):
        keys = [1, 2, 3, int(rng.choice([4, 5])), 6]
        for i, key in enumerate(keys):
            history = [0, 0, 0, *keys[:i]][-3:]
            rows.append([*history, key])
    return np.array(rows, dtype=np.float64)


@pytest.fixture(scope="module")
def trained() -> DeepLogDetector:
    return DeepLogDetector(history=3, hidden_units=16, layers=2, epochs=40, random_state=0).fit(sessions(300, 1))


def test_numpy_forward_pass_equals_the_keras_model(trained: DeepLogDetector) -> None:
    keras = keras_for_training("deeplog")
    assert os.environ["KERAS_BACKEND"] == "jax"
    classes = trained.n_keys_
    inputs = keras.Input((3,), dtype="int32")
    sequence = keras.layers.Lambda(lambda keys: keras.ops.one_hot(keys, classes))(inputs)
    for layer, weights in enumerate(trained.weights_[:-1]):
        lstm = keras.layers.LSTM(weights[1].shape[0], return_sequences=layer < len(trained.weights_) - 2)
        sequence = lstm(sequence)
        lstm.set_weights(list(weights))
    dense = keras.layers.Dense(classes)
    model = keras.Model(inputs, dense(sequence))
    dense.set_weights(list(trained.weights_[-1]))
    rows = sessions(20, 2)
    logits = np.asarray(model.predict(rows[:, :3].astype(np.int32), verbose=0), dtype=np.float64)
    expected = logits - logits.max(axis=1, keepdims=True)
    expected -= np.log(np.exp(expected).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(trained.log_probabilities(rows), expected, atol=1e-4)


def test_a_key_that_does_not_follow_its_history_scores_low_and_an_unknown_key_lowest(
    trained: DeepLogDetector,
) -> None:
    expected, branch, wrong, unknown = trained.score_samples(
        [[1, 2, 3, 4], [0, 1, 2, 3], [1, 2, 3, 1], [1, 2, 3, 99]]
    ).tolist()
    assert expected > np.log(0.3) and branch > np.log(0.8), "the model learnt both branches and the sequence"
    assert wrong < expected - 3 and unknown == LOG_FLOOR
    copy = pickle.loads(pickle.dumps(trained))
    np.testing.assert_array_equal(copy.score_samples(sessions(5, 3)), trained.score_samples(sessions(5, 3)))


def test_top_g_rule_flags_keys_outside_the_g_most_probable(trained: DeepLogDetector) -> None:
    strict = DeepLogDetector(history=3, top_g=1)
    strict.__dict__.update({k: v for k, v in trained.__dict__.items() if k.endswith("_")})
    # After 1, 2, 3 the model expects 4 or 5; with g = 1 only one of them is within the top.
    flags = strict.top_g_flags(np.array([[0, 0, 1, 2], [1, 2, 3, 1], [1, 2, 3, 4], [1, 2, 3, 5]]))
    assert flags[:2].tolist() == [False, True] and flags[2:].sum() == 1


def test_expected_keys_are_the_top_g_predictions_and_a_flagged_key_is_not_among_them(
    trained: DeepLogDetector,
) -> None:
    two = DeepLogDetector(history=3, top_g=2)
    two.__dict__.update({k: v for k, v in trained.__dict__.items() if k.endswith("_")})
    rows = np.array([[1, 2, 3, 4], [1, 2, 3, 1], [0, 0, 1, 2], [4, 6, 0, 99]], dtype=np.float64)
    keys, probabilities = two.expected_keys(rows)
    assert keys.shape == probabilities.shape == (4, 2)
    assert set(keys[0].tolist()) == set(keys[1].tolist()) == {4, 5} and probabilities[0].sum() > 0.8
    assert keys[2, 0] == 2 and (np.diff(probabilities, axis=1) <= 0).all()
    np.testing.assert_allclose(probabilities, np.exp(np.take_along_axis(two.log_probabilities(rows), keys, axis=1)))
    seen = rows[:, -1].astype(np.int64)
    np.testing.assert_array_equal(two.top_g_flags(rows), ~(keys == seen[:, None]).any(axis=1))


def test_detectors_see_only_their_columns_and_categorical_columns_stay_unscaled() -> None:
    raw = np.column_stack([np.arange(100.0) * 1000, np.tile([1.0, 2.0, 3.0, 4.0], 25)])
    scaler = FeatureScaler(passthrough=[1]).fit(raw)
    scaled = scaler.transform(raw)
    assert scaled[:, 1].tolist() == raw[:, 1].tolist() and abs(scaled[:, 0].mean()) < 1e-9
    detector = OnFeatures(RobustZScoreDetector(), columns=[1]).fit(scaled)
    assert detector.score_samples([[1e9, 2.0]])[0] > detector.score_samples([[0.0, 40.0]])[0]


def test_incremental_training_fine_tunes_from_the_parents_network_and_learns_new_keys(
    trained: DeepLogDetector,
) -> None:
    # New data: the same sessions, and a new key 7 that now follows 6.
    rows = sessions(60, 5)
    extra = np.array([[3.0, 4.0, 6.0, 7.0], [3.0, 5.0, 6.0, 7.0]] * 60)
    child = DeepLogDetector(history=3, hidden_units=16, layers=2, epochs=1, random_state=0)
    child = OnFeatures(child, columns=[0, 1, 2, 3]).continuing(OnFeatures(trained, [0, 1, 2, 3]).fit(sessions(300, 1)))
    fitted = child.fit(np.vstack([rows, extra])).detector_
    assert fitted.fine_tuned_ and fitted.n_keys_ == 8 and trained.n_keys_ == 7
    # One epoch from scratch learns little; from the parent's weights it still knows the sequence.
    scratch = DeepLogDetector(history=3, hidden_units=16, layers=2, epochs=1, random_state=0).fit(rows)
    known = np.array([[1.0, 2.0, 3.0, 4.0]])
    assert fitted.score_samples(known)[0] > scratch.score_samples(known)[0]
