// The stand-in is opened by cudarc under the driver's name; give it that soname too.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libcuda.so.1");
}
