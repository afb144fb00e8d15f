//! Runtime plumbing under the PKCS#11 layers, knowing nothing of PKCS#11:
//! one published instance that calls count themselves into (`lifecycle`,
//! `inflight`), fork detection (`fork`), a lock whose stamp tells readers
//! when their copy is stale (`stamped`) and a cheap hasher for handle tables
//! (`handle_hash`), calls run under a deadline (`deadline`), and whether
//! the application lets the module start threads (`threads`).

pub mod deadline;
pub mod fork;
pub mod handle_hash;
pub mod inflight;
pub mod lifecycle;
pub mod lock;
pub mod process;
pub mod stamped;
pub mod threads;
