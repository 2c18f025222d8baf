import Foundation
import Synchronization
import Testing
import SoulfraClient
import SoulfraHTTP
import SoulfraHTTP2
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraServer
import SoulfraWire

/// Opens a WebSocket on `/ws` over a raw socket; returns it once the 101 arrived.
func openWebSocket(_ server: BrokerServer) throws -> RawSocket {
    let s = try RawSocket(port: server.gatewayPort)
    s.write("GET /v1/worlds/playground/ws?access_token=\(TestKeys.playground) HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
            + "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    let (head, _) = s.readAll(until: { $0.text.contains("\r\n\r\n") })
    guard head.text.hasPrefix("HTTP/1.1 101") else { throw ClientError("no upgrade: \(head.text)") }
    return s
}

/// Whole messages (opcode of the first frame, payload) in the frames the gateway sent.
func webSocketMessages(_ frames: [ServerFrame]) -> [(WebSocket.Opcode, [UInt8])] {
    var out: [(WebSocket.Opcode, [UInt8])] = []
    var current: (WebSocket.Opcode, [UInt8])?
    for f in frames {
        switch f.opcode {
        case .text, .binary:
            current = (f.opcode, f.payload)
            if f.fin { out.append(current!); current = nil }
        case .continuation:
            current?.1 += f.payload
            if f.fin, let c = current { out.append(c); current = nil }
        default:
            break
        }
    }
    return out
}

/// Masked client frames for `message`, split into `parts` frames.
func clientMessage(_ op: WebSocket.Opcode, _ message: [UInt8], parts: Int = 1) -> [UInt8] {
    var out: [UInt8] = []
    let size = max(1, (message.count + parts - 1) / parts)
    var at = 0
    repeat {
        let end = min(message.count, at + size)
        WebSocket.encodeFrame(at == 0 ? op : .continuation, payload: Array(message[at..<end]), fin: end == message.count,
                              mask: (7, 8, 9, 10), into: &out)
        at = end
    } while at < message.count
    return out
}

@Suite("Hardening: the gateway end to end", .enabled(if: uringAvailable && haveCurl), .serialized)
struct HardeningTests {
    @Test("WebSocket messages of 65,500 bytes, 200 KB and 900 KB come back byte for byte, binary as binary; the instance link stays")
    func largeWebSocketMessages() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "exact", mode: .exact)
        defer { inst.stop() }
        let s = try openWebSocket(server)
        let messages: [(WebSocket.Opcode, [UInt8])] = [
            (.text, Array(String(repeating: "é", count: 32_750).utf8)),            // 65,500 bytes of UTF-8
            (.binary, (0..<200_000).map { UInt8(truncatingIfNeeded: $0 &* 7) }),
            (.binary, (0..<900_000).map { UInt8(truncatingIfNeeded: $0 &* 13) }),
            (.text, []),
        ]
        for (op, m) in messages { s.write(clientMessage(op, m, parts: 3)) }
        var got: [(WebSocket.Opcode, [UInt8])] = []
        _ = s.readAll(milliseconds: 20_000, until: { bytes in
            got = webSocketMessages(serverFrames(bytes))
            return got.count >= messages.count
        })
        #expect(got.count == messages.count)
        for (i, (op, m)) in messages.enumerated() where i < got.count {
            #expect(got[i].0 == op, "message \(i): opcode \(got[i].0)")
            #expect(got[i].1 == m, "message \(i): \(got[i].1.count) of \(m.count) bytes")
        }
        // The instance's link took every part within its frame size: no stream, and no link, was refused.
        let snap = try #require(server.snapshotNow())
        #expect(snap.closes(.frameTooLarge) == 0 && snap.oversizeFrames == 0)
        #expect(try call(server.h2c + "/v1/worlds/playground/messages", ["-d", "{}"]).0 == 200, "other requests are served meanwhile")
    }

    @Test("a WebSocket message over the 1 MiB limit is refused at once with 1009, not held")
    func tooLargeWebSocketMessage() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "exact", mode: .exact)
        defer { inst.stop() }
        let s = try openWebSocket(server)
        // Only the header of a 1.5 MB frame: the gateway refuses from the length alone.
        s.write([0x82, 0xFF, 0, 0, 0, 0, 0, 0x16, 0xE3, 0x60, 1, 2, 3, 4])
        let (out, closed) = s.readAll(until: { !serverFrames($0).filter { $0.opcode == .close }.isEmpty })
        let close = serverFrames(out).first { $0.opcode == .close }
        #expect(close.map { Array($0.payload.prefix(2)) } == [0x03, 0xF1], "close 1009")
        _ = closed
    }

    @Test("WebSocket over HTTP/2 is 426 without an Upgrade header (RFC 9113 §8.2.2); malformed session ids are 400")
    func h2WebSocketAndSessions() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "s")
        defer { inst.stop() }
        let (status, head) = try call(server.h2c + "/v1/worlds/playground/ws", ["--http2-prior-knowledge", "-i"])
        #expect(status == 426)
        #expect(!head.lowercased().contains("\nupgrade:"), "\(head)")
        let url = server.h2c + "/v1/worlds/playground/messages"
        for session in ["../../x", String(repeating: "a", count: 10_000), "Caps"] {
            #expect(try call(url, ["-H", "x-soulfra-session: \(session)", "-d", "{}"]).0 == 400, "header \(session.prefix(10))")
        }
        #expect(try call(url, ["-d", #"{"session":"../x"}"#]).0 == 400, "body session")
        #expect(try call(url, ["-H", "x-soulfra-session: user-1_a", "-d", "{}"]).0 == 200)
    }

    @Test("HEADERS on a skipped, lower stream id over a real socket: GOAWAY PROTOCOL_ERROR, counted")
    func lowerStreamID() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let block: [UInt8] = [0x82, 0x86, 0x84, 0x01, 0x01, 0x74]  // GET / :authority t
        let s = try RawSocket(port: server.gatewayPort)
        s.write(h2Preface + h2Frame(type: 0x4, flags: 0, stream: 0) + h2Frame(type: 0x1, flags: 0x5, stream: 5, block)
                + h2Frame(type: 0x1, flags: 0x5, stream: 3, block))
        let (out, closed) = s.readAll()
        #expect(goawayCode(out) == 1)
        #expect(closed)
        let c = try server.freshGatewayCounters()
        #expect(c.streamIDGoaways == 1 && c.protocolErrors >= 1)
    }

    @Test("an instance that never answers: 504 instance_timeout, and after two it leaves rotation; the rest are served")
    func deadlineAndEjection() throws {
        let server = try BrokerServer.start(gatewayConfig {
            $0.gateway.requestTimeoutMilliseconds = 2_000  // the healthy instance must never reach it, on a loaded machine too
            $0.broker.outlierConsecutiveFailures = 2
            $0.broker.outlierEjectionMilliseconds = 60_000
        })
        defer { server.stop() }
        let hold = HoldingInstance(name: "hung")
        let hung = try InstanceRunner(server: server, name: "hung", delegate: hold, tick: { s in hold.turn(s, hold: true) })
        defer { hung.stop() }
        let good = try InstanceRunner(server: server, name: "good")
        defer { good.stop() }
        var statuses: [Int] = []
        for i in 0..<12 {
            let (status, _) = try call(server.h2c + "/v1/worlds/playground/messages", ["-d", #"{"session":"u\#(i)"}"#])
            statuses.append(status)
        }
        #expect(statuses.filter { $0 == 504 }.count == 2, "\(statuses)")
        #expect(statuses.suffix(8).allSatisfy { $0 == 200 }, "\(statuses)")
        let c = try server.freshGatewayCounters()
        #expect(c.requestTimeouts == 2 && c.errors(.instanceTimeout) == 2)
        let snap = try #require(server.snapshotNow())
        #expect(snap.outlierEjections == 1 && snap.ejectedInstances == 1)
    }

    @Test("per client address: resets past the address's budget end the connection, whichever connection sent them")
    func perAddressResets() throws {
        let server = try BrokerServer.start(gatewayConfig {
            $0.gateway.resetsPerSecondPerAddress = 1
            $0.gateway.resetBurstPerAddress = 12
        })
        defer { server.stop() }
        // Two connections reset 8 streams each: within each one's own budget (200), over the address's (12).
        var goaways: [UInt32?] = []
        for _ in 0..<2 {
            let c = try server.h2Client()
            var goaway: UInt32?
            for _ in 0..<8 where goaway == nil {
                guard let id = c.post("/v1/worlds/playground/streams") else { break }
                c.flush()
                c.h2.reset(stream: id, code: 8)
                c.flush()
                for case .goaway(_, let code) in c.read() { goaway = code }
            }
            // What the gateway answered to the last resets (bounded wait).
            let until = monotonicMilliseconds() + 1_000
            while goaway == nil && monotonicMilliseconds() < until && !c.failed {
                for case .goaway(_, let code) in c.read() { goaway = code }
                usleep(10_000)
            }
            goaways.append(goaway)
        }
        #expect(goaways[0] == nil, "the first connection stayed within the address budget")
        #expect(goaways[1] == 0xB, "the second got ENHANCE_YOUR_CALM: \(goaways)")
        #expect(try server.freshGatewayCounters().addressResetGoaways == 1)
    }

    @Test("per client address: connections opened past the rate are closed on arrival")
    func perAddressConnections() throws {
        let server = try BrokerServer.start(gatewayConfig {
            $0.gateway.connectionsPerSecondPerAddress = 1
            $0.gateway.connectionBurstPerAddress = 2
        })
        defer { server.stop() }
        var answered: [Bool] = []
        var sockets: [RawSocket] = []
        for _ in 0..<3 { sockets.append(try RawSocket(port: server.gatewayPort)) }
        for s in sockets {
            s.write("GET /v1/worlds/playground/nothing HTTP/1.1\r\nHost: t\r\n\r\n")
            // A refused connection is closed at once, an admitted one answered: either ends the wait, so a loaded
            // machine only makes it longer, never different.
            answered.append(!s.readAll(milliseconds: 10_000, until: { !$0.isEmpty }).0.isEmpty)
        }
        #expect(answered == [true, true, false], "\(answered)")
        let refusals = try server.freshGatewayCounters().addressRefusals
        #expect(refusals == 1, "\(refusals) connections refused")
    }

    @Test("a key's frames/s covers replies: a long SSE reply is paced and says so")
    func replyPacing() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "talker", tokens: 200)
        defer { inst.stop() }
        let c = try server.h2Client()
        let id = try #require(c.post("/v1/worlds/playground/messages", key: TestKeys.paced, headers: [("accept", "text/event-stream")]))
        c.send(id, "{}", end: true)
        var got = ""
        #expect(pumpH2(c, milliseconds: 10_000, { e in if case .data(_, let d) = e { got += d.text } }, until: { got.contains("rate_limits") }))
        #expect(got.contains(#""event":"rate_limits","paced":true"#))
        #expect(try #require(server.snapshotNow()).quotaPacedFrames > 0)
    }

    @Test("a broker peer that never sends HELLO to a multi-loop broker gets ERROR handshake_timeout, counted")
    func silentPeerOnMultiLoopBroker() throws {
        let server = try BrokerServer.start(testConfig {
            $0.loopCount = 2
            $0.broker.handshakeTimeoutMilliseconds = 200
        })
        defer { server.stop() }
        let s = try RawSocket(port: server.tcpPort)
        let (bytes, closed) = s.readAll(milliseconds: 3_000)
        var code: ErrorCode?
        let decoder = FrameDecoder()
        bytes.withUnsafeBytes { raw in
            try? decoder.feed(raw) { h, p throws(WireError) in
                if case .error(0, let c, _) = try Frame.parse(h, p) { code = c }
                return true
            }
        }
        #expect(code == .handshakeTimeout, "\(bytes.count) bytes")
        #expect(closed)
        let snap = try #require(server.snapshotNow())
        #expect(snap.closes(.handshakeTimeout) == 1)
    }
}
