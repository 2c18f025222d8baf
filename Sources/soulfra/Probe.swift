import ArgumentParser
import SoulfraLoop

struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check that io_uring and the features the broker needs are available here.")

    func run() throws {
        do {
            let f = try UringProbe.check()
            print("ok: \(f)")
        } catch {
            fail(error.description, code: 69)
        }
    }
}
