//! Settings of the writer's connection (the tables come from `migrations`).

use rusqlite::Connection;

use crate::writer::Durability;

pub fn prepare_writer(conn: &Connection, durability: Durability) -> rusqlite::Result<()> {
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: the WAL is fsynced at every commit, so an acknowledged commit survives power
    // loss. NORMAL: fsync only at checkpoints; survives a process crash (kill -9), not an
    // OS crash or power cut.
    conn.pragma_update(
        None,
        "synchronous",
        match durability {
            Durability::Fsync => "FULL",
            Durability::Buffered => "NORMAL",
        },
    )?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(())
}
