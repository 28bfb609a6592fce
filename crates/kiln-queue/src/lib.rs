//! The Postgres build queue: schema, claims, leases, fencing, notifications.
