//! What a PostgreSQL failure means to a caller: retryable or not, full disk, damage.

use raccordo_core::StoreError;
use tokio_postgres::error::SqlState;

pub fn store_error(e: tokio_postgres::Error) -> StoreError {
    let Some(code) = e.code() else {
        // No SQLSTATE: the connection failed or was closed.
        return StoreError::Unavailable(format!("PostgreSQL: {e}"));
    };
    if *code == SqlState::DISK_FULL || *code == SqlState::INSUFFICIENT_RESOURCES {
        StoreError::Full(e.to_string())
    } else if *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::TOO_MANY_CONNECTIONS
        || code.code().starts_with("08")
    {
        StoreError::Unavailable(e.to_string())
    } else if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED {
        StoreError::Corrupt(e.to_string())
    } else {
        StoreError::Backend(e.to_string())
    }
}
