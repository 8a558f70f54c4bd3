import torch

# One intra-op thread per test process: the tests are many small tensor operations, for which extra threads
# only add synchronisation (and several test processes may share two cores).
torch.set_num_threads(1)
