//! Objects: the handle table (`table`), the DEK attribute policy
//! (`policy`), caller templates (`template`), making and reading DEKs
//! (`dek`), the object-management calls (`manage`) and search (`find`).

pub mod dek;
pub mod find;
pub mod manage;
pub mod on_hsm;
pub mod policy;
pub mod rebind;
pub mod table;
pub mod template;
