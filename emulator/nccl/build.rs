// cudarc opens NCCL as libnccl.so.2 (or libnccl.so); give the stand-in that soname too.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnccl.so.2");
}
