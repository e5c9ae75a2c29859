/// mimalloc rather than glibc's malloc (the benches use it too): a burst of
/// wakes spent a fifth of its samples in glibc's malloc and free
/// (consolidating freed chunks among threads), and every request allocates its
/// JSON, SQL rows and plugin payloads. Not in the library, so a test or an
/// embedder keeps its own allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    stagecraft::cli::main()
}
