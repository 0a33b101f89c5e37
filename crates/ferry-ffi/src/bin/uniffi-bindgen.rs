//! `uniffi-bindgen`, pinned to the workspace's uniffi: writes the Kotlin, Swift and
//! Python bindings of the built `libferry_ffi` (library mode). Run by
//! sdk/gen-bindings.sh; the same version as the scaffolding, so the two always match.

fn main() {
    uniffi::uniffi_bindgen_main()
}
