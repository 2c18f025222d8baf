import Foundation
import Testing

/// The tree's shape, checked on every test run: what the architecture promises (sans-IO modules that touch no
/// socket, clock or libc; imports that match the declared dependencies) and the size limits that keep code
/// readable. The limits are a ratchet: lower them as code is split, never raise them.
@Suite("Tidy: the source tree keeps its promises")
struct TidyTests {
    /// The longest function body allowed, in lines (declaration to closing brace).
    static let maxFunctionLines = 100
    /// The longest source file allowed, in lines.
    static let maxFileLines = 1_000

    /// Modules that take bytes, events and `now` and return bytes and actions (docs/architecture.md).
    static let sansIO: Set<String> = [
        "SoulfraWire", "SoulfraKeys", "SoulfraTLS", "SoulfraHTTP", "SoulfraHTTP2", "SoulfraBroker",
        "SoulfraPeerLink", "SoulfraGateway", "SoulfraRate", "SoulfraMetrics", "SoulfraLimits", "SoulfraVault",
    ]

    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    @Test("sans-IO modules import no libc or Foundation and never read the clock")
    func sansIOModules() throws {
        let forbidden = [
            "import Glibc", "canImport(Glibc)", "import Foundation", "monotonicNanoseconds(", "monotonicMilliseconds(",
            "clock_gettime", "time(nil)", "gettimeofday", "Date()", "ContinuousClock", "SuspendingClock", "DispatchTime",
        ]
        let targets = try Package.read(Self.root)
        for t in targets where Self.sansIO.contains(t.name) {
            #expect(!t.files.isEmpty, "no sources found for \(t.name)")
            for f in t.files {
                for (n, line) in f.lines.enumerated() where !line.trimmingCharacters(in: .whitespaces).hasPrefix("//") {
                    for word in forbidden where line.contains(word) {
                        Issue.record("\(f.path):\(n + 1): `\(word)` in sans-IO module \(t.name)")
                    }
                }
            }
        }
    }

    @Test("every import of a package module is a declared dependency; no @_exported")
    func importsDeclared() throws {
        let targets = try Package.read(Self.root)
        let local = Set(targets.map(\.name)).union(Package.products)
        for t in targets {
            for f in t.files {
                for (n, line) in f.lines.enumerated() {
                    if line.trimmingCharacters(in: .whitespaces).hasPrefix("@_exported") {
                        Issue.record("\(f.path):\(n + 1): @_exported (import what a file uses where it uses it)")
                    }
                    guard let module = Self.importedModule(line), local.contains(module), module != t.name else { continue }
                    if !t.dependencies.contains(module) {
                        Issue.record("\(f.path):\(n + 1): imports \(module), which \(t.name) does not declare in Package.swift")
                    }
                }
            }
        }
    }

    @Test("the config module reaches no part of the data plane (the CLI links it alone)")
    func configOffTheDataPlane() throws {
        let targets = try Package.read(Self.root)
        let byName = Dictionary(uniqueKeysWithValues: targets.map { ($0.name, $0) })
        var seen: Set<String> = []
        var next = ["SoulfraConfig"]
        while let t = next.popLast() {
            guard seen.insert(t).inserted, let target = byName[t] else { continue }
            next += target.dependencies
        }
        let dataPlane: Set<String> = ["SoulfraLoop", "SoulfraBroker", "SoulfraGateway", "SoulfraServer", "SoulfraHTTP",
                                      "SoulfraHTTP2", "SoulfraTLS", "SoulfraPeer", "SoulfraPeerLink", "CURing", "CNGHTTP2"]
        #expect(seen.contains("SoulfraLimits"), "the config module's dependencies were not read")
        #expect(seen.isDisjoint(with: dataPlane), "SoulfraConfig reaches \(seen.intersection(dataPlane).sorted())")
    }

    @Test("no ring preparation's result is thrown away; tests close only descriptors they own")
    func habits() throws {
        for t in try Package.read(Self.root) {
            for f in t.files {
                for (n, line) in f.lines.enumerated() {
                    if line.range(of: #"_\s*=\s*sf_prep_"#, options: .regularExpression) != nil {
                        Issue.record("\(f.path):\(n + 1): a ring preparation's result is ignored (an SQE may be lost)")
                    }
                    if t.isTest, line.range(of: #"\bclose\(\s*[\w.]+\.fd\s*\)"#, options: .regularExpression) != nil {
                        Issue.record("\(f.path):\(n + 1): a test closes another object's descriptor (its owner will close it again)")
                    }
                }
            }
        }
    }

    @Test("functions and files stay under their length limits")
    func lengths() throws {
        var longest = (lines: 0, at: "")
        for t in try Package.read(Self.root) {
            for f in t.files {
                if f.lines.count > Self.maxFileLines {
                    Issue.record("\(f.path): \(f.lines.count) lines (limit \(Self.maxFileLines)): split it")
                }
                for fn in Self.functions(f.lines) {
                    if fn.lines > longest.lines { longest = (fn.lines, "\(f.path):\(fn.line)") }
                    if fn.lines > Self.maxFunctionLines {
                        Issue.record("\(f.path):\(fn.line): a function of \(fn.lines) lines (limit \(Self.maxFunctionLines))")
                    }
                }
            }
        }
        #expect(longest.lines > 20, "the function scanner found nothing long: it is broken")
        print("TIDY longest function: \(longest.lines) lines at \(longest.at)")
    }

    @Test("the function scanner measures from declaration to closing brace, nested or not")
    func scannerMeasures() {
        let source = """
        struct S {
            func short() {
                one()
            }

            @inline(__always) public static func longer(_ x: Int) -> Int {
                if x > 0 {
                    return 1
                }
                return 0
            }
            init() {}
        }
        """
        let found = Self.functions(source.components(separatedBy: "\n"))
        #expect(found.map(\.line) == [2, 6])
        #expect(found.map(\.lines) == [3, 6])
        #expect(Self.importedModule("import SoulfraWire") == "SoulfraWire")
        #expect(Self.importedModule("@testable import SoulfraGateway") == "SoulfraGateway")
        #expect(Self.importedModule("import struct Foundation.URL") == "Foundation")
        #expect(Self.importedModule("// import Nothing") == nil)
    }

    // MARK: - Reading the tree

    /// The module an `import` line names.
    static func importedModule(_ line: String) -> String? {
        let words = line.trimmingCharacters(in: .whitespaces).split(separator: " ")
        guard let i = words.firstIndex(of: "import"), words[..<i].allSatisfy({ $0.hasPrefix("@") }), i + 1 < words.count else {
            return nil
        }
        let kinds: Set<Substring> = ["struct", "class", "enum", "protocol", "func", "var", "let", "typealias"]
        let name = kinds.contains(words[i + 1]) && i + 2 < words.count ? words[i + 2] : words[i + 1]
        return String(name.split(separator: ".")[0])
    }

    /// Functions (and initializers) whose body opens on their declaration's line: where they start and how many
    /// lines they span. The tree's formatting (four-space indentation, closing brace at the declaration's
    /// indentation) makes the closing brace findable without parsing Swift.
    static func functions(_ lines: [String]) -> [(line: Int, lines: Int)] {
        let declaration = #"^(\s*)(@[\w]+(\([^)]*\))?\s+)*((public|private|fileprivate|internal|package|static|class|final|override|mutating|nonmutating|nonisolated|convenience|required)\s+)*(func\s|init[(<?]|deinit\b).*\{\s*$"#
        var found: [(Int, Int)] = []
        for (i, line) in lines.enumerated() {
            guard let r = line.range(of: declaration, options: .regularExpression), r.lowerBound == line.startIndex else { continue }
            if line.hasSuffix("{}") { continue }
            let indent = line.prefix { $0 == " " }
            var j = i + 1
            while j < lines.count && !(lines[j].hasPrefix(indent + "}") && lines[j].dropFirst(indent.count).first == "}") { j += 1 }
            found.append((i + 1, j - i + 1))
        }
        return found
    }
}

/// What Package.swift declares, read from its text (a test cannot run `swift package` while the build that
/// runs it holds the package lock).
struct Package {
    struct Source {
        let path: String
        let lines: [String]
    }

    struct Target {
        let name: String
        let dependencies: Set<String>
        let isTest: Bool
        let files: [Source]
    }

    /// The products of other packages this one uses.
    static let products: Set<String> = ["ArgumentParser", "Histogram"]

    static func read(_ root: URL) throws -> [Target] {
        let manifest = try String(contentsOf: root.appendingPathComponent("Package.swift"), encoding: .utf8)
        var targets: [Target] = []
        var rest = manifest[...]
        while let open = rest.range(of: #"\.(target|executableTarget|testTarget)\("#, options: .regularExpression) {
            let kind = rest[open].dropFirst().prefix { $0 != "(" }
            // The call's text, to its balancing parenthesis.
            var depth = 0
            var end = open.upperBound
            var i = rest.index(before: open.upperBound)
            while i < rest.endIndex {
                if rest[i] == "(" { depth += 1 } else if rest[i] == ")" {
                    depth -= 1
                    if depth == 0 { end = rest.index(after: i); break }
                }
                i = rest.index(after: i)
            }
            let call = String(rest[open.lowerBound..<end])
            rest = rest[end...]
            guard let name = first(#"name: "([^"]+)""#, in: call) else { continue }
            var dependencies: Set<String> = []
            if let d = call.range(of: #"dependencies: \[[^\]]*\]"#, options: .regularExpression) {
                let list = String(call[d])
                for m in all(#""([^"]+)""#, in: list) { dependencies.insert(m) }
            }
            let isTest = kind == "testTarget"
            let path = first(#"path: "([^"]+)""#, in: call) ?? (isTest ? "Tests/\(name)" : "Sources/\(name)")
            targets.append(Target(name: name, dependencies: dependencies, isTest: isTest, files: try sources(root, path)))
        }
        return targets
    }

    static func sources(_ root: URL, _ path: String) throws -> [Source] {
        let dir = root.appendingPathComponent(path)
        guard let walk = FileManager.default.enumerator(atPath: dir.path) else { return [] }
        var out: [Source] = []
        for case let file as String in walk where file.hasSuffix(".swift") {
            let text = try String(contentsOf: dir.appendingPathComponent(file), encoding: .utf8)
            out.append(Source(path: "\(path)/\(file)", lines: text.components(separatedBy: "\n")))
        }
        return out.sorted { $0.path < $1.path }
    }

    static func first(_ pattern: String, in text: String) -> String? { all(pattern, in: text).first }

    static func all(_ pattern: String, in text: String) -> [String] {
        guard let re = try? NSRegularExpression(pattern: pattern) else { return [] }
        return re.matches(in: text, range: NSRange(text.startIndex..., in: text)).compactMap {
            Range($0.range(at: 1), in: text).map { String(text[$0]) }
        }
    }
}
