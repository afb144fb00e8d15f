//! Keeps this process's view of token DEKs in step with the shared store, so
//! a DEK made by another process is found here, and one it destroyed is gone.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::Result;
use crate::runtime::stamped::Stamped;
use crate::store::DekRow;
use crate::token::module::Module;
use crate::token::object::table::{Dek, DekState};
use crate::token::object::template::Attrs;

pub fn dek_from_row(slot: usize, row: &DekRow) -> Result<Arc<Dek>> {
    Ok(Arc::new(Dek {
        id: row.id,
        slot,
        owner: None,
        state: Stamped::new(DekState::new(
            Attrs::decode(&row.attrs)?,
            row.record.clone(),
            row.generation,
        )),
    }))
}

pub fn sync_token_deks(m: &Module) -> Result<()> {
    let (Some(slot), Some(env)) = (m.dek_slot, m.envelope.as_ref()) else {
        return Ok(());
    };
    let rows = env.with_store(|s| Ok(s.list_ids_generations()?))?;
    let mut known: HashMap<[u8; 16], (cryptoki_sys::CK_OBJECT_HANDLE, i64)> = HashMap::new();
    for (h, d) in m.objects.deks() {
        if d.is_token() {
            let gen = d.state.read().generation;
            known.insert(d.id, (h, gen));
        }
    }
    for (id, gen) in &rows {
        if known.remove(id).is_some_and(|(_, g)| g == *gen) {
            continue;
        }
        let Some(row) = env.with_store(|s| Ok(s.get(id)?))? else {
            continue;
        };
        match dek_from_row(slot, &row) {
            Ok(dek) => {
                m.objects.intern_dek(dek);
            }
            Err(_) => crate::log_warn!(
                "DEK {} has unreadable attributes; skipped",
                crate::hex::encode(id)
            ),
        }
    }
    // What is left was destroyed elsewhere.
    for (id, (h, _)) in known {
        m.objects.remove(h);
        env.cache.remove(&id);
    }
    Ok(())
}
