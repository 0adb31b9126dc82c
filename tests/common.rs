//! Helpers for the cross-tool tests in this folder.
