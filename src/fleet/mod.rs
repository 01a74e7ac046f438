//! Fleet mode: several nodes sharing one PostgreSQL.

pub mod budget;
