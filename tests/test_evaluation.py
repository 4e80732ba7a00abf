"""Evaluation helpers against values computed by hand on tiny arrays."""

import json
import math

import numpy as np
import pytest

from cifar10_transfer import evaluation
from cifar10_transfer.config import CLASS_NAMES

# Four classes in use out of ten (airplane, automobile, bird, cat); by hand:
#   true airplane (4): 2 right, 1 -> automobile, 1 -> bird
#   true automobile (3): 2 right, 1 -> airplane
#   true bird (2) and cat (1): all right
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
Y_PRED = np.array([0, 0, 1, 2, 1, 1, 0, 2, 2, 3])


def probabilities_with(confidences, predicted):
    """Rows whose top class ``predicted`` has probability ``confidence``, the rest spread evenly."""
    rows = np.empty((len(confidences), 10))
    for row, (confidence, label) in enumerate(zip(confidences, predicted, strict=True)):
        rows[row] = (1 - confidence) / 9
        rows[row, label] = confidence
    return rows


def test_confusion_matrix_counts_rows_are_true_classes():
    expected = np.zeros((10, 10), dtype=int)
    expected[:4, :4] = [[2, 1, 1, 0], [1, 2, 0, 0], [0, 0, 2, 0], [0, 0, 0, 1]]
    np.testing.assert_array_equal(evaluation.confusion_matrix(Y_TRUE, Y_PRED), expected)


def test_confusion_matrix_normalized_rows_sum_to_one_absent_rows_zero():
    normalized = evaluation.confusion_matrix(Y_TRUE, Y_PRED, normalize=True)
    np.testing.assert_allclose(normalized[0, :3], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(normalized[1, :2], [1 / 3, 2 / 3])
    np.testing.assert_allclose(normalized.sum(axis=1), [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])


def test_classification_report_per_class_and_averages():
    report = evaluation.classification_report(Y_TRUE, Y_PRED)
    assert list(report.index) == [*CLASS_NAMES, "macro avg", "weighted avg"]
    assert list(report.columns) == ["precision", "recall", "f1", "support"]
    np.testing.assert_allclose(
        report.loc["airplane", ["precision", "recall", "f1"]], [2 / 3, 0.5, 4 / 7]
    )
    np.testing.assert_allclose(report.loc["automobile", ["precision", "recall", "f1"]], [2 / 3] * 3)
    np.testing.assert_allclose(report.loc["bird", ["precision", "recall", "f1"]], [2 / 3, 1, 0.8])
    np.testing.assert_allclose(report.loc["cat", ["precision", "recall", "f1"]], [1, 1, 1])
    np.testing.assert_allclose(report.loc["truck", ["precision", "recall", "f1"]], [0, 0, 0])
    assert report["support"].tolist()[:5] == [4, 3, 2, 1, 0]
    # Macro averages over all ten classes; weighted recall is the accuracy.
    assert report.loc["macro avg", "precision"] == pytest.approx((3 * 2 / 3 + 1) / 10)
    assert report.loc["weighted avg", "recall"] == pytest.approx(0.7)
    assert report.loc["weighted avg", "support"] == 10


def test_per_class_accuracy_is_recall_and_nan_without_images():
    per_class = evaluation.per_class_accuracy(Y_TRUE, Y_PRED)
    assert list(per_class) == list(CLASS_NAMES)
    assert per_class["airplane"] == 0.5
    assert per_class["automobile"] == pytest.approx(2 / 3)
    assert per_class["bird"] == per_class["cat"] == 1.0
    assert math.isnan(per_class["truck"])


def test_accuracy_and_log_loss_by_hand():
    probabilities = probabilities_with([0.5, 0.25, 0.9], [0, 3, 2])
    y_true = np.array([0, 1, 2])  # right, wrong (true class gets 0.75 / 9), right
    assert evaluation.accuracy(y_true, probabilities) == pytest.approx(2 / 3)
    expected_loss = -(math.log(0.5) + math.log(0.75 / 9) + math.log(0.9)) / 3
    assert evaluation.log_loss(y_true, probabilities) == pytest.approx(expected_loss)


def test_log_loss_clips_zero_probability():
    one_hot_wrong = probabilities_with([1.0], [1])
    assert evaluation.log_loss([0], one_hot_wrong) == pytest.approx(-math.log(1e-7))


CONFUSED_TRUE = np.array([3] * 5 + [5] * 5 + [1] * 4 + [9] * 4)  # cat, dog, automobile, truck
CONFUSED_PRED = np.array(
    [5, 5, 5, 3, 3] + [3, 5, 5, 5, 5] + [9, 9, 1, 1] + [1, 9, 9, 9]
)  # cat->dog 3, dog->cat 1, automobile->truck 2, truck->automobile 1


def test_most_confused_pairs_sorted_by_count_ties_in_class_order():
    pairs = evaluation.most_confused_pairs(CONFUSED_TRUE, CONFUSED_PRED, top_k=10)
    assert list(pairs.columns) == ["true", "predicted", "count", "share_of_true"]
    assert list(zip(pairs["true"], pairs["predicted"], pairs["count"], strict=True)) == [
        ("cat", "dog", 3),
        ("automobile", "truck", 2),
        ("dog", "cat", 1),
        ("truck", "automobile", 1),
    ]
    np.testing.assert_allclose(pairs["share_of_true"], [3 / 5, 2 / 4, 1 / 5, 1 / 4])


def test_most_confused_pairs_symmetric_merges_directions():
    pairs = evaluation.most_confused_pairs(CONFUSED_TRUE, CONFUSED_PRED, symmetric=True)
    assert list(pairs.columns) == ["class_a", "class_b", "count", "share_of_true"]
    assert pairs.values.tolist() == [["cat", "dog", 4, 4 / 10], ["automobile", "truck", 3, 3 / 8]]
    top = evaluation.most_confused_pairs(CONFUSED_TRUE, CONFUSED_PRED, top_k=1, symmetric=True)
    assert top[["class_a", "class_b"]].values.tolist() == [["cat", "dog"]]


def test_ece_zero_when_confidence_matches_accuracy():
    # 4 images at 75% confidence, 3 right; 2 images at 50% confidence, 1 right.
    confidences = [0.75] * 4 + [0.5] * 2
    predicted = [0, 1, 2, 3, 4, 5]
    y_true = np.array([0, 1, 2, 9, 4, 9])
    probabilities = probabilities_with(confidences, predicted)
    assert evaluation.expected_calibration_error(y_true, probabilities) == pytest.approx(
        0, abs=1e-12
    )
    bins = evaluation.reliability_diagram_data(y_true, probabilities, n_bins=4)
    assert bins["count"].tolist() == [0, 2, 4, 0]  # bins are (lower, upper]
    np.testing.assert_allclose(bins["bin_lower"], [0, 0.25, 0.5, 0.75])
    np.testing.assert_allclose(bins["bin_upper"], [0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(bins.loc[1:2, "confidence"], [0.5, 0.75])
    np.testing.assert_allclose(bins.loc[1:2, "accuracy"], [0.5, 0.75])
    assert bins.loc[[0, 3], "confidence"].isna().all()


def test_ece_overconfident_and_mixed_by_hand():
    one_hot = probabilities_with([1.0] * 4, [0, 1, 2, 3])
    assert evaluation.expected_calibration_error([0, 1, 0, 0], one_hot) == pytest.approx(0.5)
    # Half the images at 0.9 with 50% right (gap 0.4), half at 0.6 with 100% right (gap 0.4).
    mixed = probabilities_with([0.9, 0.9, 0.6, 0.6], [0, 1, 2, 3])
    ece = evaluation.expected_calibration_error([0, 0, 2, 3], mixed, n_bins=10)
    assert ece == pytest.approx(0.4)


def test_evaluate_predictions_is_json_and_matches_parts():
    probabilities = probabilities_with([0.9, 0.8, 0.6, 0.7], [0, 1, 1, 3])
    y_true = np.array([0, 1, 2, 3])
    result = evaluation.evaluate_predictions(y_true, probabilities, CLASS_NAMES)
    assert set(result) == {"accuracy", "loss", "per_class", "confusion_matrix", "ece"}
    assert json.loads(json.dumps(result)) == result
    assert result["accuracy"] == 0.75
    assert result["loss"] == pytest.approx(evaluation.log_loss(y_true, probabilities))
    assert result["ece"] == pytest.approx(
        evaluation.expected_calibration_error(y_true, probabilities)
    )
    assert result["per_class"]["automobile"] == pytest.approx(
        {"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "support": 1}
    )
    assert result["confusion_matrix"][2][1] == 1
    assert sum(map(sum, result["confusion_matrix"])) == 4


@pytest.mark.parametrize(
    ("y_true", "probabilities", "message"),
    [
        ([0, 1], np.full((3, 10), 0.1), r"probabilities must have shape \(2, num_classes\)"),
        ([0, 1], np.full(10, 0.1), r"probabilities must have shape \(N, num_classes\)"),
        ([0, 1], np.full((2, 10), 2.0), "softmax"),
        ([0.0, 1.0], np.full((2, 10), 0.1), r"y_true must be a 1-D integer array of shape \(N,\)"),
        ([0, 10], np.full((2, 10), 0.1), r"y_true must hold class indices in 0..9"),
        ([], np.full((0, 10), 0.1), "y_true must hold at least one label"),
    ],
)
def test_bad_inputs_name_the_argument(y_true, probabilities, message):
    with pytest.raises(ValueError, match=message):
        evaluation.accuracy(y_true, probabilities)


def test_mismatched_predictions_raise():
    with pytest.raises(ValueError, match="y_pred must have the shape of y_true"):
        evaluation.confusion_matrix([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="probabilities must have one column per class"):
        evaluation.evaluate_predictions([0, 1], np.full((2, 5), 0.2))


def test_predict_with_tta_averages_image_and_mirror():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(32, 32, 3), dtype="uint8")
    hidden = keras.layers.Rescaling(1 / 255)(inputs)
    hidden = keras.layers.Flatten()(hidden)
    outputs = keras.layers.Dense(10, activation="softmax")(hidden)
    model = keras.Model(inputs, outputs)
    images = np.random.default_rng(0).integers(0, 256, size=(6, 32, 32, 3), dtype=np.uint8)

    plain = model.predict(images, verbose=0)
    mirrored = model.predict(images[:, :, ::-1].copy(), verbose=0)
    averaged = evaluation.predict_with_tta(model, images, batch_size=4)
    assert averaged.shape == (6, 10) and averaged.dtype == np.float32
    np.testing.assert_allclose(averaged, (plain + mirrored) / 2, rtol=1e-5, atol=1e-7)
    assert not np.allclose(averaged, plain)  # the flip pass really ran
    # Averaging over both orientations makes the result mirror-invariant.
    np.testing.assert_allclose(
        evaluation.predict_with_tta(model, images[:, :, ::-1]), averaged, rtol=1e-5, atol=1e-7
    )
    np.testing.assert_allclose(
        evaluation.predict_with_tta(model, images, flip=False), plain, rtol=1e-6
    )
    # Reusing plain predictions the caller already has gives the same average.
    np.testing.assert_allclose(
        evaluation.predict_with_tta(model, images, probabilities=plain), averaged, rtol=1e-6
    )


def test_percent_formats_fractions_and_marks_missing_values():
    assert evaluation.percent(0.79734) == "79.7%"
    assert evaluation.percent(0.79734, digits=2) == "79.73%"
    assert evaluation.percent(None) == evaluation.percent(float("nan")) == "–"


# ---------------------------------------------------------------- common corruptions


def _test_images(count=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)


@pytest.mark.parametrize("corruption", list(evaluation.CORRUPTIONS))
def test_each_corruption_changes_the_images_the_same_way_every_time(corruption):
    images = _test_images()
    first = evaluation.corrupt(images, corruption, seed=3)
    assert first.dtype == np.uint8 and first.shape == images.shape
    assert not np.array_equal(first, images)
    np.testing.assert_array_equal(first, evaluation.corrupt(images, corruption, seed=3))
    harshest = evaluation.corrupt(images, corruption, severity=5, seed=3).astype(float)
    # The harshest severity moves the pixels further from the originals than severity 1.
    mildest = evaluation.corrupt(images, corruption, severity=1, seed=3).astype(float)
    assert np.abs(harshest - images).mean() > np.abs(mildest - images).mean()


def test_corruptions_do_what_their_names_say():
    images = _test_images()
    pixels = images.astype(float)
    contrast = evaluation.corrupt(images, "low_contrast").astype(float)
    spread = contrast.std(axis=(1, 2, 3)) / pixels.std(axis=(1, 2, 3))
    np.testing.assert_allclose(spread, evaluation.CORRUPTIONS["low_contrast"][2], atol=0.01)
    brighter = evaluation.corrupt(images, "brightness").astype(float)
    assert (brighter.max(axis=-1) >= pixels.max(axis=-1)).all()
    assert brighter.mean() > pixels.mean() + 20
    noisy = evaluation.corrupt(images, "gaussian_noise").astype(float) - pixels
    assert 10 < noisy.std() < 255 * evaluation.CORRUPTIONS["gaussian_noise"][2]  # clipped
    blurred = evaluation.corrupt(images, "gaussian_blur").astype(float)
    assert np.abs(np.diff(blurred, axis=2)).mean() < 0.7 * np.abs(np.diff(pixels, axis=2)).mean()
    blocky = evaluation.corrupt(images, "pixelate")
    assert len(np.unique(blocky[0, :, :, 0])) < len(np.unique(images[0, :, :, 0]))
    with pytest.raises(ValueError, match="corruption must be one of gaussian_noise"):
        evaluation.corrupt(images, "fog")
    with pytest.raises(ValueError, match="images must be uint8"):
        evaluation.corrupt(pixels, "jpeg")
    with pytest.raises(ValueError, match="severity must be 1 to 5"):
        evaluation.corrupt(images, "jpeg", severity=6)


class _ByBrightness:
    """A stand-in model: class k for images whose mean is nearest 25 k (k = 0..9)."""

    def predict(self, images, batch_size=None, verbose=0):
        means = images.reshape(len(images), -1).mean(axis=1)
        classes = np.clip(np.round(means / 25), 0, 9).astype(int)
        return np.eye(10, dtype=np.float32)[classes]


def test_corruption_accuracies_relate_each_to_the_clean_accuracy():
    labels = np.arange(40) % 10
    images = np.broadcast_to((labels * 25).astype(np.uint8)[:, None, None, None], (40, 32, 32, 3))
    measured = evaluation.corruption_accuracies(_ByBrightness(), np.array(images), labels)
    assert measured["clean"] == 1.0 and measured["test_images"] == 40
    assert list(measured["severities"]) == ["3", "5"]
    for severity in measured["severities"].values():
        assert set(severity["corruptions"]) == set(evaluation.CORRUPTIONS)
        brightness = severity["corruptions"]["brightness"]
        assert brightness["accuracy"] < 1.0 and brightness["ratio"] == brightness["accuracy"]
        ratios = [value["ratio"] for value in severity["corruptions"].values()]
        assert severity["mean_ratio"] == pytest.approx(np.mean(ratios))
    harsher = measured["severities"]["5"]["corruptions"]["brightness"]["accuracy"]
    assert harsher <= measured["severities"]["3"]["corruptions"]["brightness"]["accuracy"]
