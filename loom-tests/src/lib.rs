//! loom models (being written).
