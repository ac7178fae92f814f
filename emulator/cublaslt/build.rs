// The stand-in is opened by cudarc under the real library's name; give it that soname too.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcublasLt.so.13");
}
