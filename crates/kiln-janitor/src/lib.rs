//! The janitor: migrations, rescue of lapsed leases, retries, expiry and pruning.
