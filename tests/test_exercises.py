"Every checker passes the reference solution and fails typical wrong ones with a message that says which."
import pytest, torch
from diffusers.models.embeddings import get_timestep_embedding

from sdcourse.exercises import CheckResult, check_q_sample, check_timestep_embedding
from sdcourse.unet import timestep_embedding


def q_sample(x0, t, noise, alpha_bar):
    ab = alpha_bar[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


def test_q_sample_reference_passes():
    result = check_q_sample(q_sample)
    assert isinstance(result, CheckResult) and result.passed and bool(result) and "PASS" in repr(result)


@pytest.mark.parametrize("wrong, says", [
    (lambda x0, t, n, ab: ab[t].view(-1, 1, 1, 1) * x0 + (1 - ab[t].view(-1, 1, 1, 1)).sqrt() * n, "scales it by sqrt(alpha_bar[t])"),
    (lambda x0, t, n, ab: ab[t].view(-1, 1, 1, 1).sqrt() * x0 + n, "noise is added unscaled"),
    (lambda x0, t, n, ab: ab[t].view(-1, 1, 1, 1).sqrt() * x0 + (1 - ab[t].view(-1, 1, 1, 1)) * n, "use its square root"),
    (lambda x0, t, n, ab: (1 - ab[t].view(-1, 1, 1, 1)).sqrt() * x0 + ab[t].view(-1, 1, 1, 1).sqrt() * n, "swapped"),
    (lambda x0, t, n, ab: q_sample(x0, (t - 1).clamp(min=0), n, ab), "off by one"),
    (lambda x0, t, n, ab: ab[t].sqrt() * x0 + (1 - ab[t]).sqrt() * n, "reshape it to [4, 1, 1, 1]"),
    (lambda x0, t, n, ab: q_sample(x0, t, n, ab).tolist(), "returned a list"),
    (lambda x0, t, n, ab: q_sample(x0, t, n, ab)[:, 0], "returned shape [4, 8, 8]"),
    (lambda x0, t, n, ab: q_sample(x0, t, n, ab) + 0.01, "differs from the reference by up to 0.01"),
])
def test_q_sample_typical_mistakes_fail_with_a_reason(wrong, says):
    result = check_q_sample(wrong)
    assert not result and says in result.message, result


from sdcourse.exercises import check_kl_divergence, check_reparameterize


def test_vae_references_pass():
    assert check_reparameterize(lambda mu, lv, eps: mu + (0.5 * lv).exp() * eps)
    assert check_kl_divergence(lambda mu, lv: 0.5 * (mu ** 2 + lv.exp() - 1 - lv).flatten(1).sum(1))


@pytest.mark.parametrize("wrong, says", [
    (lambda mu, lv, eps: mu + lv * eps, "used as if it were sigma"),
    (lambda mu, lv, eps: mu + lv.exp() * eps, "is the variance"),
    (lambda mu, lv, eps: mu + eps, "not scaled by sigma"),
    (lambda mu, lv, eps: (0.5 * lv).exp() * eps, "mu is missing"),
])
def test_reparameterize_mistakes(wrong, says):
    result = check_reparameterize(wrong)
    assert not result and says in result.message, result


@pytest.mark.parametrize("wrong, says", [
    (lambda mu, lv: -0.5 * (mu ** 2 + lv.exp() - 1 - lv).flatten(1).sum(1), "sign is flipped"),
    (lambda mu, lv: (mu ** 2 + lv.exp() - 1 - lv).flatten(1).sum(1), "factor 1/2 is missing"),
    (lambda mu, lv: 0.5 * (mu ** 2 + lv.exp() - 1 - lv).flatten(1).mean(1), "averages over"),
    (lambda mu, lv: 0.5 * (mu ** 2 + lv.exp() - 1 - lv), "sum them over every dimension but the batch"),
    (lambda mu, lv: 0.5 * (mu ** 2 + (2 * lv).exp() - 1 - 2 * lv).flatten(1).sum(1), "not exp(2 * logvar)"),
    (lambda mu, lv: 0.5 * (mu ** 2 + lv.exp() - lv).flatten(1).sum(1), "-1 inside the sum is missing"),
])
def test_kl_mistakes(wrong, says):
    result = check_kl_divergence(wrong)
    assert not result and says in result.message, result



def test_timestep_embedding_references_pass():
    assert check_timestep_embedding(lambda t, dim: timestep_embedding(t, dim))
    assert check_timestep_embedding(lambda t, dim: get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=0))


def rising(t, dim, power):
    "The frequencies grow with k, written two ways a learner might (they differ in float32's last digits)."
    k = torch.arange(dim // 2) / (dim // 2)
    angles = t.float()[:, None] * (10_000 ** k if power else torch.exp(k * torch.log(torch.tensor(10_000.0))))
    return torch.cat([angles.cos(), angles.sin()], -1)


@pytest.mark.parametrize("wrong, says", [
    (lambda t, dim: get_timestep_embedding(t, dim, flip_sin_to_cos=False, downscale_freq_shift=0), "swapped"),
    (lambda t, dim: timestep_embedding(t, dim).view(-1, 2, dim // 2).transpose(1, 2).flatten(1), "interleaved"),
    (lambda t, dim: get_timestep_embedding(t, dim, flip_sin_to_cos=True, downscale_freq_shift=1), "original DDPM code's convention (diffusers' downscale_freq_shift=1)"),
    (lambda t, dim: rising(t, dim, power=True), "frequencies grow"),
    (lambda t, dim: rising(t, dim, power=False), "frequencies grow"),
    (lambda t, dim: timestep_embedding(t, dim)[:, :dim // 2], "shape [5, 8]"),
    (lambda t, dim: timestep_embedding(t.float() / 1000, dim), "differs from the reference"),
])
def test_timestep_embedding_mistakes(wrong, says):
    result = check_timestep_embedding(wrong)
    assert not result and says in result.message, result


# The checkers added with lectures 1, 4, 7 and 11, the untouched stub, and the lectures' own exercise cells.
import ast, json, re
from pathlib import Path

from sdcourse.data import parse_caption
from sdcourse.exercises import (CAPTION_CASES, NOT_ATTEMPTED, check_contrastive_loss, check_hub_id, check_parse_caption,
                                check_training_loss)
from sdcourse.pipeline import HUB_ID
from sdcourse.text import contrastive_loss

NBS = Path(__file__).resolve().parents[1] / "nbs"


def stub(*args): raise NotImplementedError


@pytest.mark.parametrize("checker", [check_q_sample, check_timestep_embedding, check_parse_caption, check_contrastive_loss, check_hub_id,
                                     check_training_loss, check_reparameterize, check_kl_divergence])
def test_an_untouched_stub_is_not_attempted_yet(checker):
    result = checker(stub)
    assert not result and not result.attempted and result.message == NOT_ATTEMPTED and repr(result).startswith("TO DO")


def case_sensitive(caption):  # a typical mistake: capitalised words are not in the lookup, so the learner's code raises
    if caption != caption.lower(): raise KeyError(caption.split()[0])
    return parse_caption(caption)


def test_parse_caption_reference_passes_and_mistakes_are_named():
    assert check_parse_caption(parse_caption) and len(CAPTION_CASES) >= 8
    one_word = lambda c: parse_caption(c) | {"position": parse_caption(c)["position"].split()[-1]}
    for wrong, says in [(one_word, "a position can be two words"), (lambda c: parse_caption(c) | {"size": None}, "leave out what the caption does not name"),
                        (lambda c: {k: v for k, v in parse_caption(c).items() if k != "background"}, "names the background"),
                        (lambda c: parse_caption(c) if c == c.lower() else {}, "lowercase the caption"),
                        (lambda c: {k: v for k, v in parse_caption(c).items() if k != "background" or "dark" not in c}, "see BACKGROUND_WORDS"),
                        (case_sensitive, "lowercase the caption"),
                        (lambda c: {**parse_caption(c), "size": "small"} if "big" in c else parse_caption(c), "'big' means large"),
                        (lambda c: list(parse_caption(c).values()), "return a dict")]:
        result = check_parse_caption(wrong)
        assert not result and says in result.message, result


def test_contrastive_loss_reference_passes_and_mistakes_are_named():
    assert check_contrastive_loss(contrastive_loss)
    ce = torch.nn.functional.cross_entropy
    for wrong, says in [(lambda l: ce(l, torch.arange(len(l))), "only one direction"), (lambda l: ce(l.T, torch.arange(len(l))), "only one direction"),
                        (lambda l: 2 * contrastive_loss(l), "summed; InfoNCE as CLIP trains it averages"),
                        (lambda l: len(l) * contrastive_loss(l), "summed over the batch"),
                        (lambda l: (ce(l, torch.zeros(len(l), dtype=torch.long)) + ce(l.T, torch.zeros(len(l), dtype=torch.long))) / 2, "labels = torch.arange(n)")]:
        result = check_contrastive_loss(wrong)
        assert not result and says in result.message, result


def _loss(unet, x0, context, empty, drop, t, noise, alpha_bar, target=None, feed=None, sqrt=True, dropout=True, reduce=torch.mean):
    "The training loss written independently of the checker, with one switch per mistake."
    ab = alpha_bar[t].view(-1, 1, 1, 1)
    x_t = (ab.sqrt() * x0 + (1 - ab).sqrt() * noise) if sqrt else ab * x0 + (1 - ab) * noise
    c = context if dropout is False else torch.where(drop[:, None, None], context, empty) if dropout == "inverted" else torch.where(drop[:, None, None], empty, context)
    return reduce((unet(x0 if feed == "x0" else x_t, t, c) - (x0 if target == "x0" else noise)) ** 2)


@pytest.mark.parametrize("kwargs, says", [(dict(dropout=False), "never dropped"), (dict(dropout="inverted"), "wrong way round"),
                                          (dict(target="x0"), "the target is the noise"), (dict(feed="x0"), "the UNet sees x0"),
                                          (dict(sqrt=False), "use their square roots"), (dict(reduce=torch.sum), "take their mean")])
def test_training_loss_mistakes_are_named(kwargs, says):
    assert check_training_loss(_loss)
    result = check_training_loss(lambda *a: _loss(*a, **kwargs))
    assert not result and says in result.message, result


def test_hub_id_reference_passes_and_mistakes_are_named():
    assert check_hub_id(lambda s: HUB_ID.fullmatch(s) is not None)
    for wrong, says in [(lambda s: "/" in s, "a slash is not enough"), (lambda s: len(s.split("/")) == 2 and not s.startswith((".", "~")), "non-empty"),
                        (lambda s: re.fullmatch(r"\w+/\w+", s) is not None, "names may hold '-'"),
                        (lambda s: len(s.split("/")) == 2 and all(s.split("/")), "starts with a letter or digit"),
                        (lambda s: re.fullmatch(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w./-]*", s) is not None, "exactly one slash"),
                        (lambda s: "yes", "return True or False")]:
        result = check_hub_id(wrong)
        assert not result and says in result.message, result


def _cells(name):
    return [c for c in json.loads((NBS / name).read_text())["cells"] if c["cell_type"] == "code"]


@pytest.mark.parametrize("lecture", sorted(p.name for p in NBS.glob("[01][0-9]*_*.ipynb") if p.name != "00_core.ipynb"))
def test_every_lecture_shows_a_stub_and_its_checker_never_the_solution(lecture):
    calls = 0
    for cell in _cells(lecture):
        source = "".join(cell["source"])
        if "check_" not in source or "sdcourse.exercises" not in source: continue
        tree = ast.parse("\n".join(l for l in source.splitlines() if not l.startswith(("#|", "%", "!"))))
        defined = {n.name: n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        for call in (n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "").startswith("check_")):
            calls += 1
            arg = call.args[0].id
            assert arg in defined, f"{lecture}: {call.func.id}({arg}) checks a function not written in that cell"
            raises = [n for n in ast.walk(defined[arg]) if isinstance(n, ast.Raise) and "NotImplementedError" in ast.unparse(n)]
            assert raises, f"{lecture}: {arg} is not a stub (it should end in raise NotImplementedError; the solution lives in 90_exercises)"
            assert "not attempted yet" in json.dumps(cell.get("outputs", [])), f"{lecture}: the stub's saved output is not 'not attempted yet'"
    assert calls >= 1, f"{lecture} has no exercise with a checker"


def test_the_exercises_page_holds_every_checker_with_one_folded_solution():
    import sdcourse.exercises as ex
    checkers = [n for n in ex.__all__ if n.startswith("check_")]
    assert len(checkers) >= 14
    folded = ["".join(c["source"]) for c in _cells("90_exercises.ipynb") if "#| code-fold: true" in "".join(c["source"])]
    for name in checkers:
        solutions = [s for s in folded if re.search(rf"\b{name}\(", s)]
        assert len(solutions) == 1, f"{name}: {len(solutions)} folded solution cells (expected one)"


# The exercise proper of each lecture (issue #38): its answer is not on its page, its checker passes the reference and names each
# mistake it claims to catch, and the lecture then uses the learner's function (or the course's, while the stub is untouched).

from sdcourse.exercises import EXERCISES


def _stub(*args, **kwargs): raise NotImplementedError


@pytest.mark.parametrize("ex", EXERCISES, ids=lambda e: e.name)
def test_an_exercise_passes_its_reference_and_names_each_mistake(ex):
    assert ex.checker(ex.reference), f"{ex.name}: the checker fails its own reference"
    assert not ex.checker(_stub).attempted  # an untouched stub is "not attempted yet", not a failure
    assert len(ex.mistakes) >= 2, f"{ex.name}: an exercise names at least two typical mistakes"
    for wrong, hint in ex.mistakes:
        verdict = ex.checker(wrong)
        assert not verdict and hint in verdict.message, (ex.name, hint, verdict)
    assert ex.used_by.strip() and (ex.library == "" or ex.library.split(".")[0] in ("diffusers", "transformers", "peft", "torch", "scipy", "accelerate"))


def names_defined(source):
    "The functions, classes and variables a cell defines or imports by name."
    try: tree = ast.parse("\n".join(l for l in source.splitlines() if not l.lstrip().startswith(("#|", "%", "!"))))
    except SyntaxError: return set()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)): found.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store): found.add(node.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)): found |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return found


def exercise_on_page(cells, name):
    """Where the exercise `name` sits in a lecture's code cells: (index of the stub's cell, the cells before it that define `name` itself,
    the later cells that hand `my_<name>` to `use_yours`)."""
    codes = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    stub = next((i for i, s in enumerate(codes) if re.search(rf"def my_{name}\(", s) and "NotImplementedError" in s and f"check_{name}(my_{name})" in s), None)
    if stub is None: return None, [], []
    before = [i for i, s in enumerate(codes[:stub]) if name in names_defined(s)]
    used = [i for i, s in enumerate(codes[stub:], stub) if re.search(rf"use_yours\([^)]*my_{name}\b", s)]
    return stub, before, used


@pytest.mark.parametrize("ex", EXERCISES, ids=lambda e: e.name)
def test_an_exercises_answer_is_not_on_its_page_and_the_lecture_uses_the_learners_code(ex):
    cells = _cells(f"{ex.lecture}.ipynb")
    stub, before, used = exercise_on_page(cells, ex.name)
    assert stub is not None, f"{ex.lecture}: no stub `my_{ex.name}` (raising NotImplementedError) checked by check_{ex.name}"
    assert before == [], f"{ex.lecture}: code cells {before} define {ex.name} before the exercise asks for it"
    assert used, f"{ex.lecture}: no cell after the exercise uses the learner's my_{ex.name} (through use_yours)"
    codes = [c for c in cells if c["cell_type"] == "code"]
    assert "course's" in json.dumps(codes[used[0]].get("outputs", [])), f"{ex.lecture}: saved without saying whose {ex.name} ran"


def test_the_answer_detector_finds_an_answer_above_its_exercise():
    cell = lambda s: {"cell_type": "code", "source": s}
    stub = cell("from sdcourse.exercises import check_f\ndef my_f(x):\n    raise NotImplementedError\nr = check_f(my_f)")
    assert exercise_on_page([cell("def f(x): return x"), stub, cell("g = use_yours(r, my_f, ours)")], "f") == (1, [0], [2])
    assert exercise_on_page([cell("from somewhere import f"), stub], "f") == (1, [0], [])
    assert exercise_on_page([cell("y = f(2)"), stub, cell("use_yours(r, my_f, ours)")], "f") == (1, [], [2])


def test_every_lecture_has_an_exercise_proper_most_checked_against_a_library():
    "Issue #38's bar: lectures 01 to 16 each have an exercise whose answer is not on their page; at least 8 are checked against a library."
    lectures = sorted(p.stem for p in NBS.glob("[0-9][0-9]*_*.ipynb") if 1 <= int(p.name[:2]) <= 16)  # 07b and 08b, second parts, included
    assert {p[:2] for p in lectures} == {f"{i:02d}" for i in range(1, 17)} and sorted({ex.lecture for ex in EXERCISES}) == lectures
    assert len({ex.lecture for ex in EXERCISES if ex.library}) >= 8
