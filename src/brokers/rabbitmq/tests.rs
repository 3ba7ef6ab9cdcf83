//! Unit tests for the pure parts: names, desired objects, config normalisation, endpoints.
