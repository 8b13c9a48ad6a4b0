"""Reference implementation of the whole TEE-IO stack."""
