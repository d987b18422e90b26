//! synod-storage.
