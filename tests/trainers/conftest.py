"""One torch thread per test process: the CI box has 2 shared cores, and two threads per process
fighting other processes made tiny-model steps 5x slower than one thread (measured)."""

import torch

torch.set_num_threads(1)
