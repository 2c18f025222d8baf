import ArgumentParser
import Glibc
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

/// The network interfaces this process sees (how a test checks, from inside a container, that it has only
/// loopback). Not in `--help`.
struct Interfaces: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List the network interfaces this process can see.", shouldDisplay: false)

    func run() throws {
        var list: UnsafeMutablePointer<ifaddrs>?
        guard getifaddrs(&list) == 0 else { fail("getifaddrs: \(String(cString: strerror(errno)))", code: 71) }
        defer { freeifaddrs(list) }
        var names: [String] = []
        var p = list
        while let entry = p {
            let name = String(cString: entry.pointee.ifa_name)
            if !names.contains(name) { names.append(name) }
            p = entry.pointee.ifa_next
        }
        print(names.joined(separator: "\n"))
    }
}
