import torch
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import precision_recall_fscore_support

from cnnkit.tasks.classify.metrics import confusion_matrix, per_class_report


def test_confusion_and_report_match_scikit_learn():
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (200,), generator=generator)
    predictions = torch.where(torch.rand(200, generator=generator) < 0.7, targets, torch.randint(0, 4, (200,)))
    predictions[predictions == 3] = 2  # class 3 is never predicted: precision undefined -> 0
    confusion = confusion_matrix(predictions, targets, 4)
    assert confusion.tolist() == sk_confusion(targets, predictions, labels=range(4)).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predictions, labels=range(4), zero_division=0
    )
    report = per_class_report(confusion, ["a", "b", "c", "d"])
    for row, p, r, f, s in zip(report, precision, recall, f1, support):
        assert abs(row.precision - p) < 1e-9 and abs(row.recall - r) < 1e-9 and abs(row.f1 - f) < 1e-9
        assert row.support == s


def test_score_matches_scikit_learn_loss_and_accuracy():
    from sklearn.metrics import accuracy_score, log_loss

    from cnnkit.tasks.classify.evaluate import score

    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 3, generator=generator)
    labels = torch.randint(0, 3, (64,), generator=generator)
    result = score(logits, labels, ["a", "b", "c"])
    assert abs(result.loss - log_loss(labels, logits.double().softmax(1), labels=range(3))) < 1e-5
    assert result.accuracy == accuracy_score(labels, logits.argmax(1))
    assert result.confusion == sk_confusion(labels, logits.argmax(1), labels=range(3)).tolist()


def test_score_of_no_images_is_nan_with_an_empty_matrix():
    from cnnkit.tasks.classify.evaluate import score

    result = score(torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), ["a", "b"])
    assert result.count == 0 and result.confusion == [[0, 0], [0, 0]] and result.accuracy != result.accuracy


def test_eval_result_macro_f1_averages_the_classes_present_like_scikit_learn():
    from sklearn.metrics import f1_score

    from cnnkit.tasks.classify.evaluate import score

    classes = [str(i) for i in range(10)]
    labels = torch.tensor([0] * 20 + [1] * 20 + [2] * 5)  # 3 of 10 classes in the data
    predictions = labels.clone()
    predictions[:2] = 7  # one absent class is predicted, so it counts (precision 0)
    result = score(torch.nn.functional.one_hot(predictions, 10).float(), labels, classes)
    assert abs(result.macro_f1 - f1_score(labels, predictions, average="macro")) < 1e-9
    assert result.macro_f1 > 0.7  # averaging all ten classes would give about 0.3
    assert result.absent == ["3", "4", "5", "6", "8", "9"] and result.to_dict()["absent_classes"] == result.absent
    table = result.format().split("confusion matrix")[0]
    assert "6 of the model's 10 classes are absent" in table
    assert [line.split()[0] for line in table.splitlines()[3:7]] == ["0", "1", "2", "7"]
