//! Helpers shared by the kernel integration tests.
