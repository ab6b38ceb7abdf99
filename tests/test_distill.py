"""Distillation (DeiT): the losses against a hand computation, the teacher's view of a batch, the
class check, and runs through the CLI that learn from a teacher and resume with it."""

import json
import math

import pytest
import torch
from conftest import TINY_ARGS

import vitkit
from vitkit.cli import main
from vitkit.preprocess import Preprocess
from vitkit.train.distill import Distillation, Teacher, distillation_loss
from vitkit.train.run_folder import RunFolder

FAST = ["--batch-size", "32", "--crop-padding", "0", "--lr", "2e-3", "--label-smoothing", "0"]
FAST += ["--threads", "1", "--precision", "fp32", "--no-progress"]


def _log_softmax(row):
    z = [math.exp(v) for v in row]
    return [math.log(v / sum(z)) for v in z]


STUDENT = [[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]
TEACHER = [[0.0, 3.0, 1.0], [1.0, 0.0, 4.0]]


def test_hard_distillation_is_the_cross_entropy_against_the_teachers_top_class():
    # teacher's top classes: 1 and 2; -log softmax(student)[that class], averaged
    hand = -(_log_softmax(STUDENT[0])[1] + _log_softmax(STUDENT[1])[2]) / 2
    got = distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), "hard")
    assert got.item() == pytest.approx(hand, rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_distillation_is_the_kl_divergence_at_the_temperature_times_its_square(tau):
    total = 0.0
    for s, t in zip(STUDENT, TEACHER, strict=True):
        log_p = _log_softmax([v / tau for v in s])
        log_q = _log_softmax([v / tau for v in t])
        total += sum(math.exp(q) * (q - p) for p, q in zip(log_p, log_q, strict=True))  # KL(q || p)
    hand = total / len(STUDENT) * tau * tau
    got = distillation_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), "soft", tau)
    assert got.item() == pytest.approx(hand, rel=1e-6)


class _Fixed(torch.nn.Module):
    """A 'model' that answers fixed logits, whatever the images."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits


def test_the_objective_weighs_labels_and_teacher_by_alpha_and_averages_two_heads():
    pre = Preprocess((4, 4), 1)
    teacher = Teacher(_Fixed(TEACHER), pre, "fixed")
    labels = torch.tensor([0, 0])
    x = torch.zeros(2, 1, 4, 4)
    ce = -(_log_softmax(STUDENT[0])[0] + _log_softmax(STUDENT[1])[0]) / 2
    hard = -(_log_softmax(STUDENT[0])[1] + _log_softmax(STUDENT[1])[2]) / 2
    out = Distillation(teacher, pre, "hard", alpha=0.25)(_Fixed(STUDENT), x, labels)
    assert out.loss.item() == pytest.approx(0.75 * ce + 0.25 * hard, rel=1e-6)
    assert out.correct.item() == 1 and out.seen == 2  # argmax 0 and 2 against labels 0, 0

    # a distillation token: the class head against the labels, the distillation head against the teacher
    dist_head = [[0.0, 1.0, 0.0], [5.0, 0.0, 0.0]]
    two = _Fixed(STUDENT)
    two.forward = lambda x: (torch.tensor(STUDENT), torch.tensor(dist_head))
    out = Distillation(teacher, pre, "hard", alpha=0.5)(two, x, labels)
    hard_dist = -(_log_softmax(dist_head[0])[1] + _log_softmax(dist_head[1])[2]) / 2
    assert out.loss.item() == pytest.approx(0.5 * ce + 0.5 * hard_dist, rel=1e-6)
    # scored by the heads' average, (1, .75, -.5) and (2.55, .1, 1.5): both 0, right; each head alone gets one
    assert out.correct.item() == 2


def test_a_teacher_sees_the_students_batch_as_its_own_preprocessing_would_make_it():
    rng = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (2, 1, 28, 28), dtype=torch.uint8, generator=rng)
    student = Preprocess((28, 28), 1, pad=2, mean=(0.3,), std=(0.4,))
    teacher = Preprocess((28, 28), 3, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))
    seen = teacher.from_batch(student(pixels), student)
    assert torch.allclose(seen, teacher(pixels), atol=1e-5)  # border dropped, grey to RGB, renormalised
    assert student.from_batch(student(pixels), student) is not None
    same = student(pixels)
    assert student.from_batch(same, student) is same  # the same preprocessing: nothing to do
    bigger = Preprocess((56, 56), 1)
    up = bigger.from_batch(student(pixels), student)
    assert up.shape == (2, 1, 56, 56)
    assert torch.allclose(up[..., ::2, ::2].mean(), bigger(pixels)[..., ::2, ::2].mean(), atol=0.02)


# ============================================================================ through the CLI
@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    """A teacher: a small ViT trained on digits for a few epochs."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    assert main(["train", "--data", "digits", "--epochs", "3", "--out", str(out), *TINY_ARGS, *FAST]) == 0
    return out


def test_a_student_learns_from_a_teacher_and_resumes_with_it(teacher_run, tmp_path):
    out = tmp_path / "student"
    argv = ["train", "--data", "digits", "--epochs", "1", "--out", str(out), *TINY_ARGS, *FAST]
    argv += ["--teacher", str(teacher_run), "--distill", "soft", "--distill-tau", "2"]
    assert main(argv) == 0
    record = json.loads((out / "train_config.json").read_text())
    assert record["train"]["teacher"] == str(teacher_run) and record["train"]["distill"] == "soft"
    assert record["teacher"]["source"] == str(teacher_run) and record["teacher"]["params"] > 0
    assert main(["train", "--resume", str(out), "--epochs", "2", "--no-progress"]) == 0
    assert RunFolder.read_state(RunFolder(out).find_checkpoint("last")).epoch == 2
    assert json.loads((out / "train_config.json").read_text())["train"]["distill_tau"] == 2


def test_a_teacher_must_know_the_students_classes(teacher_run, tmp_path, capsys):
    few = tmp_path / "few"
    argv = ["train", "--data", "digits", "--classes", "7,2,5", "--steps", "1", *TINY_ARGS, *FAST]
    assert main([*argv, "--out", str(few), "--teacher", str(teacher_run)]) == 0  # 3 of its 10, in another order
    assert main([*argv, "--out", str(tmp_path / "s"), "--teacher", str(few)]) == 0
    capsys.readouterr()
    argv = ["train", "--data", "digits", "--steps", "1", "--out", str(tmp_path / "all"), *TINY_ARGS, *FAST]
    assert main([*argv, "--teacher", str(few)]) == 1  # the student's 10 classes: 7 unknown to the teacher
    err = capsys.readouterr().err.strip()
    assert "--teacher" in err and "does not know the data's classes 0, 1, 3, 4, 6 and 2 more" in err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "all").exists()


def test_distillation_options_without_a_teacher_are_refused(tmp_path, capsys):
    assert main(["train", "--data", "digits", "--distill", "soft", "--out", str(tmp_path / "s"), *FAST]) == 1
    assert "--teacher" in capsys.readouterr().err


def test_a_timm_classifier_by_name_with_weights_from_a_file_teaches(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10)
    save_file(net.state_dict(), tmp_path / "teacher.safetensors")
    out = tmp_path / "student"
    argv = ["train", "--data", "digits", "--steps", "2", "--out", str(out), *TINY_ARGS, *FAST]
    argv += ["--teacher", f"timm:test_resnet={tmp_path / 'teacher.safetensors'}"]
    assert main(argv) == 0
    record = json.loads((out / "train_config.json").read_text())
    assert record["teacher"]["preprocess"]["image_size"] == [160, 160]  # timm's own input size

    net5 = timm.create_model("test_resnet", pretrained=False, num_classes=5)
    save_file(net5.state_dict(), tmp_path / "five.safetensors")
    argv[argv.index("--out") + 1] = str(tmp_path / "other")
    argv[-1] = f"timm:test_resnet={tmp_path / 'five.safetensors'}"
    assert main(argv) == 1


def test_the_cnn_reference_teaches_a_vit(tmp_path):
    cnn = tmp_path / "cnn"
    assert (
        main(["train", "--data", "digits", "--model", "resnet_fmnist", "--steps", "3", "--out", str(cnn), *FAST]) == 0
    )
    out = tmp_path / "student"
    argv = ["train", "--data", "digits", "--steps", "2", "--out", str(out), *TINY_ARGS, *FAST, "--teacher", str(cnn)]
    assert main(argv) == 0
    record = json.loads((out / "train_config.json").read_text())
    assert record["teacher"]["params"] == sum(p.numel() for p in vitkit.load(cnn / "last").parameters())


def test_a_distillation_token_trains_its_own_head_and_inference_averages_both(teacher_run, tmp_path, capsys):
    out = tmp_path / "student"
    argv = ["train", "--data", "digits", "--steps", "3", "--out", str(out), *TINY_ARGS, *FAST]
    assert main([*argv, "--teacher", str(teacher_run), "--distill-token"]) == 0
    model = vitkit.load(out / "last").eval()
    assert model.config.distill_token and model.config.num_prefix_tokens == 2
    assert model.head_dist.weight.abs().sum() > 0  # the distillation head learnt (it starts at zero)
    x = torch.randn(4, 1, 8, 8)
    cls, dist = model.forward_heads(model.forward_features(x)[0])
    assert torch.allclose(model(x), (cls + dist) / 2, atol=1e-6)
    assert main([*argv, "--out", str(tmp_path / "alone"), "--distill-token"]) == 1  # a token needs a teacher
    no_cls = [*argv, "--out", str(tmp_path / "no-cls"), "--teacher", str(teacher_run), "--distill-token"]
    capsys.readouterr()
    assert main([*no_cls, "--set", "class_token=False"]) == 1
    assert "add --set class_token=True" in capsys.readouterr().err
