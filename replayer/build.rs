fn main() {
    tapwire_revision::stamp();
}
