"""The nn tests run their kernels on one thread.

Their arrays are tiny: a parallel region costs more than it saves there, and
on a busy machine a 2-thread region waits for both threads to be scheduled
(measured here under load: 8 ms per tiny ResNet forward on 1 thread, 200 ms
on 2). Thread-count independence of the kernels is tested in tests/.
"""

import pytest

import fastconv


@pytest.fixture(autouse=True)
def one_kernel_thread():
    before = fastconv.get_num_threads()
    fastconv.set_num_threads(1)
    yield
    fastconv.set_num_threads(before)
