//! Tools for testing flows without a real network.
