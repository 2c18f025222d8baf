import Foundation

/// The world images, built locally (no registry is reachable and nothing is pulled): `soulfra/base-world` is
/// `FROM scratch` with the soulfra binary, the shared libraries it loads and the dynamic loader;
/// `soulfra/{kids,executive,sports}-world` add their template's label and environment on top. Each image is
/// labelled with the binary's size and time, and built again only when the binary changed.
public struct WorldImages: Sendable {
    public let client: DockerClient
    /// The soulfra binary the images run.
    public let executable: String
    public static let base = "soulfra/base-world:latest"
    public static let kinds = ["kids", "executive", "sports"]

    public init(client: DockerClient, executable: String) {
        self.client = client
        self.executable = executable
    }

    public static func image(kind: String) -> String { kind == "custom" ? base : "soulfra/\(kind)-world:latest" }

    /// Size and modification time of the binary: what says an image is current.
    var stamp: String {
        var st = stat()
        guard stat(executable, &st) == 0 else { return "unknown" }
        return "\(st.st_size)-\(st.st_mtim.tv_sec)"
    }

    /// Builds what is missing or stale; returns the images built (empty: all current).
    @discardableResult
    public func ensure() throws(DockerError) -> [String] {
        var built: [String] = []
        let stamp = stamp
        let tags = Self.kinds.map(Self.image(kind:)) + [Self.base]
        let previous = tags.map(imageID)
        defer {
            // The images these replaced go too, the templates' before the base they stand on (one a container
            // still runs stays): rebuilds leave nothing behind.
            for (tag, old) in zip(tags, previous) {
                if let old, let now = imageID(tag), now != old { _ = try? client.call("DELETE", "/images/\(old)") }
            }
        }
        // Inside a container (the daemon run by docker-compose) there is no ldd to gather libraries from: the
        // images that started it are the ones to use.
        if !FileManager.default.isExecutableFile(atPath: "/usr/bin/ldd") {
            let missing = ([Self.base] + Self.kinds.map(Self.image(kind:))).filter { label($0, "soulfra.binary") == nil }
            guard missing.isEmpty else { throw DockerError(0, "cannot build \(missing.joined(separator: ", ")) here (no ldd): build them on the host with soulfra init") }
            return []
        }
        if label(Self.base, "soulfra.binary") != stamp {
            try build(tag: Self.base, files: try rootfs(), dockerfile: """
                FROM scratch
                COPY rootfs/ /
                LABEL soulfra.binary="\(stamp)"
                ENTRYPOINT ["/soulfra"]
                """)
            built.append(Self.base)
        }
        for kind in Self.kinds where label(Self.image(kind: kind), "soulfra.binary") != stamp {
            try build(tag: Self.image(kind: kind), files: [], dockerfile: """
                FROM \(Self.base)
                LABEL soulfra.binary="\(stamp)" soulfra.template="\(kind)"
                ENV SOULFRA_TEMPLATE=\(kind)
                """)
            built.append(Self.image(kind: kind))
        }
        return built
    }

    func imageID(_ image: String) -> String? {
        (try? client.json("GET", "/images/\(image)/json") as? [String: Any])?["Id"] as? String
    }

    func label(_ image: String, _ name: String) -> String? {
        guard let o = try? client.json("GET", "/images/\(image)/json") as? [String: Any] else { return nil }
        return ((o["Config"] as? [String: Any])?["Labels"] as? [String: Any])?[name] as? String
    }

    /// The binary at /soulfra and every library `ldd` names, at its own path, with the loader.
    func rootfs() throws(DockerError) -> [(String, String)] {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/ldd")
        p.arguments = [executable]
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        do { try p.run() } catch { throw DockerError(0, "cannot run ldd on \(executable): \(error)") }
        let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        var files = [("soulfra", executable)]
        for line in text.split(separator: "\n") {
            // "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
            guard let path = parts.first(where: { $0.hasPrefix("/") }) else { continue }
            let resolved = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
            files.append((String(path.dropFirst()), resolved))
        }
        return files
    }

    /// POST /build with a tar of the Dockerfile and `rootfs/<path>` for each file; the engine's progress
    /// stream is read for an error line.
    func build(tag: String, files: [(String, String)], dockerfile: String) throws(DockerError) {
        var tar = TarWriter()
        tar.add("Dockerfile", Data(dockerfile.utf8), mode: 0o644)
        for (inImage, host) in files {
            guard let data = FileManager.default.contents(atPath: host) else { throw DockerError(0, "cannot read \(host) for \(tag)") }
            tar.add("rootfs/" + inImage, data, mode: 0o755)
        }
        let answer = try client.call("POST", "/build" + DockerClient.query([("t", tag), ("rm", "1"), ("forcerm", "1")]), body: tar.finish(),
                                     contentType: "application/x-tar", timeoutMilliseconds: 300_000)
        for line in answer.body.split(separator: UInt8(ascii: "\n")) {
            if let o = try? JSONSerialization.jsonObject(with: Data(line)) as? [String: Any], let e = o["error"] as? String {
                throw DockerError(0, "building \(tag): \(e)")
            }
        }
    }
}

/// A ustar archive in memory: regular files, with their parent directories made as needed.
struct TarWriter {
    private var data = Data()
    private var directories = Set<String>()

    mutating func add(_ path: String, _ contents: Data, mode: Int) {
        var parent = ""
        for part in path.split(separator: "/").dropLast() {
            parent += part + "/"
            if directories.insert(parent).inserted { header(parent, size: 0, mode: 0o755, type: "5") }
        }
        header(path, size: contents.count, mode: mode, type: "0")
        data.append(contents)
        data.append(Data(count: (512 - contents.count % 512) % 512))
    }

    mutating func finish() -> Data {
        data.append(Data(count: 1024))
        return data
    }

    private mutating func header(_ path: String, size: Int, mode: Int, type: Character) {
        var h = [UInt8](repeating: 0, count: 512)
        func put(_ s: String, _ at: Int, _ len: Int) { for (i, b) in s.utf8.prefix(len).enumerated() { h[at + i] = b } }
        func octal(_ v: Int, _ at: Int, _ len: Int) { put(String(String(v, radix: 8).suffix(len - 1)).leftPadded(len - 1), at, len - 1) }
        var name = path, prefix = ""
        if name.utf8.count > 100, let cut = path.dropLast().lastIndex(of: "/") {
            prefix = String(path[..<cut])
            name = String(path[path.index(after: cut)...])
        }
        put(name, 0, 100)
        octal(mode, 100, 8)
        octal(0, 108, 8)
        octal(0, 116, 8)
        octal(size, 124, 12)
        octal(Int(Date().timeIntervalSince1970), 136, 12)
        for i in 148..<156 { h[i] = 0x20 }
        h[156] = UInt8(ascii: type.unicodeScalars.first!)
        put("ustar", 257, 6)
        put("00", 263, 2)
        put(prefix, 345, 155)
        let sum = h.reduce(0) { $0 + Int($1) }
        put(String(String(sum, radix: 8)).leftPadded(6), 148, 6)
        h[154] = 0
        h[155] = 0x20
        data.append(contentsOf: h)
    }
}

extension String {
    func leftPadded(_ n: Int) -> String { String(repeating: "0", count: max(0, n - count)) + self }
}
