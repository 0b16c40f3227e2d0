"""The course (course/README.md): every lab's checks pass on the reference answers and fail, saying
so, on the unfilled blanks; each lab stops at its first blank with one line; the solutions define
exactly the blanks; every `python course/...` command of the course's README parses."""
import ast
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import method

ROOT = Path(__file__).resolve().parent.parent
COURSE = ROOT / "course"
sys.path.insert(0, str(COURSE))
import check  # noqa: E402  (course/check.py, the grader)
import common  # noqa: E402
from tests import test_docs  # noqa: E402

# the blank each student version reaches first
FIRST_BLANK = {"lab1": "gaussian_eps", "lab2": "add_noise", "lab3": "invert_step_exact",
               "lab4": "translate_many"}


def blanks(lab):
    """The functions of a lab script whose body raises Blank, in file order."""
    tree = ast.parse((COURSE / f"{common.LABS[lab]}.py").read_text())
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef)
            and any(isinstance(n, ast.Raise) and "Blank" in ast.unparse(n) for n in ast.walk(node))]


@pytest.mark.parametrize("lab", list(common.LABS))
def test_checks_pass_on_the_solutions(lab):
    lines = []
    assert check.run(lab, solution=True, show=lines.append), "\n".join(lines)
    assert lines[-1] == f"{lab}: {len(check.CHECKS[lab])} of {len(check.CHECKS[lab])} checks " \
                        "passed (the reference answers)"


@pytest.mark.parametrize("lab", list(common.LABS))
def test_checks_of_the_blanks_fail_saying_why(lab):
    lines = []
    assert not check.run(lab, show=lines.append)
    assert all(line.startswith("FAIL") and line.endswith("not written yet (it raises Blank)")
               for line in lines[:-1]), lines
    assert lines[-1].startswith(f"{lab}: 0 of ")


@pytest.mark.parametrize("lab", list(common.LABS))
def test_solutions_define_exactly_the_blanks_and_every_blank_is_checked(lab):
    names = blanks(lab)
    solution = check.functions(lab, solution=True)
    assert names and all(callable(getattr(solution, n, None)) for n in names), names
    defined = {n for n, v in vars(solution).items()
               if callable(v) and getattr(v, "__module__", "") == solution.__name__}
    assert defined == set(names)
    checked = {b.strip() for blank, _ in check.CHECKS[lab] for b in blank.split(",")}
    assert set(names) <= checked | {"all three"}, (names, checked)


@pytest.mark.parametrize("lab", list(common.LABS))
def test_student_version_stops_at_its_first_blank(lab, tmp_path, monkeypatch):
    """In this process (the subprocess test below checks the command line's one line and exit
    code), so that the four labs cost no interpreter start-ups."""
    path = COURSE / f"{common.LABS[lab]}.py"
    monkeypatch.setattr(sys, "argv", [str(path), "--out", str(tmp_path)])
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # common.start replaces it
    with pytest.raises(common.Blank) as e:
        runpy.run_path(str(path), run_name="__main__")
    assert str(e.value).startswith(FIRST_BLANK[lab] + " ("), str(e.value)


def test_a_lab_run_ends_at_a_blank_in_one_line_with_exit_code_1(tmp_path):
    done = subprocess.run([sys.executable, str(COURSE / "lab2_training.py"), "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.strip() == common.blank_line("lab2", "add_noise (x_t in eq. 4)")
    assert "Traceback" not in done.stderr and "\n" not in done.stderr.strip()


def test_grader_command_line_exit_codes(capsys):
    assert check.main(["lab1", "--solution"]) == 0
    assert check.main(["lab1"]) == 1
    assert "lab1: 0 of 5 checks passed" in capsys.readouterr().out


def course_commands():
    """Every `python course/...` command of course/README.md, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (COURSE / "README.md").read_text())
    return sorted({m.group(1).strip() for m in re.finditer(r"python (course/[^`|#\n)]*)", text)})


@pytest.mark.parametrize("command", course_commands())
def test_course_readme_commands_parse(command):
    """Each documented lab or grader command names a course script and only flags it has."""
    script, *argv = shlex.split(command)
    labs = {f"course/{name}.py": lab for lab, name in common.LABS.items()}
    assert script in [*labs, "course/check.py"], f"unknown script {script}"
    parser = check.get_parser() if script == "course/check.py" else common.parser(labs[script])
    parser.parse_args(argv)


def test_course_readme_shows_every_lab_and_the_grader_and_its_project_commands_parse(monkeypatch):
    shown = {shlex.split(c)[0] for c in course_commands()}
    assert shown == {"course/check.py", *(f"course/{n}.py" for n in common.LABS.values())}
    # its phendiff.py and tools/prepare.py commands, parsed as tests/test_docs.py parses the docs'
    monkeypatch.setattr(test_docs, "DOCS", [COURSE / "README.md"])
    project = [command for _, command in test_docs.commands()]
    assert len(project) >= 3, project
    for command in project:
        assert not test_docs.parse(command), (command, test_docs.parse(command))


def test_the_course_checkpoint_takes_guidance_and_the_demo_model_refuses_it():
    """Lab 4's part 2: checkpoints/demo.pt never learnt the null label (p_uncond 0) and refuses
    guidance; checkpoints/eps_lat9.pt is the paper's eps-prediction with label dropout, whose
    conditional and null eps differ (guidance scales that difference)."""
    with pytest.raises(ValueError, match="label dropout"):
        method.load_method(ROOT / "checkpoints" / "demo.pt", guidance=2.0)
    model, ckpt = method.load_method(ROOT / "checkpoints" / "eps_lat9.pt", guidance=2.0)
    assert ckpt["config"]["prediction"] == "eps" and ckpt["config"]["p_uncond"] == 0.1
    net = model.net()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([500, 500])
    y = torch.full((2,), ckpt["classes"].index("latrunculin_b_10uM"))
    with torch.no_grad():
        eps_y = net(x, t, y)
        eps_null = net(x, t, torch.full_like(y, net.null_label))
    assert (eps_y - eps_null).abs().mean() > 1e-3
