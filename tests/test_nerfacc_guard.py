import nerfacc
import pytest
import torch


@pytest.mark.skipif(torch.cuda.is_available(), reason="the guard only applies to CPU runs")
def test_nerfacc_cuda_ops_are_blocked_on_cpu():
    with pytest.raises((RuntimeError, ImportError), match="CUDA op"):
        nerfacc.cuda.exclusive_sum(torch.zeros(3), torch.zeros(1, dtype=torch.long))
