"""The device rule: an explicit CUDA request is refused when CUDA is not usable, never downgraded to the CPU."""

import pytest
import torch

from intermix_core.method.devices import DeviceError, resolve_device
from pipelines.cli import main


def test_auto_and_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("auto") == resolve_device(None)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA:1"])
def test_cuda_without_a_gpu_is_refused(name: str) -> None:
    with pytest.raises(DeviceError, match="refusing to fall back to the CPU"):
        resolve_device(name)


def test_unknown_device_lists_the_choices() -> None:
    with pytest.raises(DeviceError, match="expected one of auto, cpu, cuda, cuda:N"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a usable GPU")
def test_cli_train_on_cuda_fails_in_one_line(tmp_path, capsys) -> None:
    code = main(["train", "--dataset", "esc10", "--model", "piczak_cnn", "--strategy", "standard",
                 "--data", str(tmp_path / "none"), "--fold", "1", "--out", str(tmp_path / "out"), "--device", "cuda"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "refusing to fall back to the CPU" in err
