import os

# Triton kernels run under the interpreter on a CPU-only machine; the variable must be set before
# any module with a @triton.jit kernel is imported.
if os.environ.get("TRITON_INTERPRET") is None:
    try:
        import torch

        if not torch.cuda.is_available():
            os.environ["TRITON_INTERPRET"] = "1"
    except ImportError:
        pass

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    # fresh random inputs each run, but a failing run can be replayed with R1_TEST_SEED
    seed = int(os.environ.get("R1_TEST_SEED", torch.seed() % (2**31)))
    torch.manual_seed(seed)
    request.node._r1_seed = seed
    yield seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    seed = getattr(item, "_r1_seed", None)
    if report.failed and seed is not None:  # printed with the failure, so a CI log is enough to replay it
        report.sections.append(("seed", f"replay with R1_TEST_SEED={seed} python -m pytest '{item.nodeid}'"))


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none present)")


@pytest.fixture
def cli_error(capsys):
    """cli_error(argv): run `r1core ARGV`, expect it to exit on bad input, and return its message,
    which must be one line (a usage error's text from argparse, or the recipe's own SystemExit)."""
    def run(argv):
        from r1core.recipes.cli import main

        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code not in (0, None), "exited as a success"
        msg = str(e.value.code) if isinstance(e.value.code, str) else capsys.readouterr().err
        assert msg.strip() and "\n" not in msg.strip(), msg
        return msg

    return run
