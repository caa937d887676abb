//! The store-and-forward disk buffer.
