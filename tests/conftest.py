import pytest
import torch

from evaluation import inception

# The test workloads are tiny: intra-op threads buy nothing, and on a shared 2-core machine their
# spin-waiting turned a 1 s training test into 69 s. One thread also fixes the reduction order.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def inception_weights(tmp_path_factory):
    """A random-weight FID network saved like the published file: (net, path)."""
    torch.manual_seed(0)
    net = inception.InceptionV3().eval()
    path = tmp_path_factory.mktemp("weights") / inception.WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return net, path
