//! synod-kv.
