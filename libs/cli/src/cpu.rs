//! The instruction sets this binary was compiled for, against what this CPU
//! and its OS support.
//!
//! Local builds use `-C target-cpu=native` (and ggml `-march=native`), so a
//! binary copied to an older machine would die of SIGILL at the first vector
//! instruction it lacks — in ggml's C++ static initializers, before `main`.
//! The check is therefore C (`cpu_check.c`), compiled for the baseline x86-64
//! and run as an early constructor: a missing feature gets one line on stderr
//! naming it and exit 2 before anything else runs. Tested under qemu with a
//! CPU that lacks AVX (tools/infer/tests/cpu.rs).

#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
extern "C" {
    /// Comma list of the features compiled for and missing here ("" if none);
    /// a NUL-terminated static string.
    fn llpipe_cpu_missing() -> *const std::ffi::c_char;
}

/// The features (rustc's names) this binary was compiled for that this CPU
/// or OS lacks, comma-separated; empty where everything is there, and where
/// no check is built (other architectures). Calling it also links the
/// start-up check into every tool.
pub fn missing_features() -> String {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        // SAFETY: the C function takes no argument and returns a pointer to a
        // static NUL-terminated buffer it never writes again once filled (the
        // constructor fills it before main, single-threaded).
        unsafe { std::ffi::CStr::from_ptr(llpipe_cpu_missing()) }
            .to_string_lossy()
            .into_owned()
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_machine_that_built_the_tests_runs_them() {
        // The constructor would have ended this process otherwise; the
        // function agrees: nothing compiled for is missing.
        assert_eq!(super::missing_features(), "");
    }
}
