import torch

# The test workloads are tiny: intra-op threads buy nothing, and on a shared 2-core machine their
# spin-waiting turned a 1 s training test into 69 s. One thread also fixes the reduction order.
torch.set_num_threads(1)
