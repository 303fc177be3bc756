//! The root's part of a takeover (see the handover module): every number the kernel may hold
//! must mean the same in the successor. Those are the slots (each an image version) and the
//! placeholder numbers of root entries; both are recorded in the mount's state log as they
//! are handed out (and a slot's end when it is freed), one JSON line each, appended only,
//! and read back by [`AutoFs::restore`]. Not compacted yet: a line per mount and per freed
//! slot.
//!
//! The kernel's reference counts are not recorded (they change with every lookup), so a
//! restored slot is kept until the daemon stops: [`UNKNOWN_REFS`] never counts down to 0.

use super::*;
use crate::handover::StateLog;
use serde_json::{Value, json};
use tracing::warn;

/// The kernel reference count of a restored slot.
pub(super) const UNKNOWN_REFS: u64 = 1 << 62;

pub(super) fn slot_line(slot: u32, name: &str, meta: &ObjectMeta) -> Value {
    json!({"slot": slot, "name": name, "key": meta.key, "size": meta.size, "etag": meta.etag})
}

pub(super) fn placeholder_line(name: &str, ino: u64) -> Value {
    json!({"placeholder": name, "ino": ino})
}

impl AutoFs {
    /// Records slots and placeholders in `log` from now on. What exists already is in it: a
    /// new mount has no slot yet, and a restored one's log is its predecessor's.
    pub fn record_to(&self, log: Arc<StateLog>) {
        *self.log.lock().unwrap_or_else(PoisonError::into_inner) = Some(log);
    }

    pub(super) fn record(&self, line: &Value) {
        let log = self.log.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(log) = log.as_ref()
            && let Err(e) = log.append(&line.to_string())
        {
            warn!(error = %e, "cannot record the mount's state for a successor");
        }
    }

    /// Reopens what a predecessor recorded in `lines`, under the same numbers, after the
    /// listing (`refresh`) and before the first request. A version that cannot be opened any
    /// more (replaced in the store and not cached) is left out: the kernel's requests for it
    /// get ESTALE. Returns how many slots were restored.
    pub async fn restore(&self, lines: &[String]) -> usize {
        let mut slots: BTreeMap<u32, (String, ObjectMeta)> = BTreeMap::new();
        let mut placeholders = HashMap::new();
        for line in lines {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                warn!(line, "a state line that does not parse; ignored");
                continue;
            };
            if let (Some(slot), Some(name), Some(key), Some(size), Some(etag)) = (
                v["slot"].as_u64().and_then(|s| u32::try_from(s).ok()),
                v["name"].as_str(),
                v["key"].as_str(),
                v["size"].as_u64(),
                v["etag"].as_str(),
            ) {
                let meta = ObjectMeta {
                    key: key.to_owned(),
                    size,
                    etag: etag.to_owned(),
                };
                slots.insert(slot, (name.to_owned(), meta));
            } else if let Some(gone) = v["gone"].as_u64().and_then(|s| u32::try_from(s).ok()) {
                slots.remove(&gone);
            } else if let (Some(name), Some(ino)) = (v["placeholder"].as_str(), v["ino"].as_u64()) {
                placeholders.insert(name.to_owned(), ino);
            }
        }
        let mut restored = 0;
        for (slot, (name, meta)) in slots {
            let image = match Image::open(self.store.clone(), meta.clone(), self.cache.clone())
                .await
            {
                Ok(image) => image,
                Err(e) => {
                    warn!(image = %name, slot, etag = %meta.etag, error = %e, "cannot reopen a version the kernel still references");
                    continue;
                }
            };
            let mut state = self.state();
            let current = state.images.get(&name).is_some_and(|o| o.etag == meta.etag);
            let m = self.install(&mut state, slot, &name, image, &meta, UNKNOWN_REFS);
            if !current {
                // Replaced or removed meanwhile: it serves what is open on it, nothing new.
                m.retired.store(true, Ordering::Relaxed);
                m.stop_hydration();
                if state.mounted.get(&name).is_some_and(|c| Arc::ptr_eq(c, &m)) {
                    state.mounted.remove(&name);
                }
            }
            state.next_slot = state.next_slot.max(slot.saturating_add(1));
            restored += 1;
        }
        let mut state = self.state();
        state.placeholders.extend(placeholders);
        restored
    }
}
