// The ceiling: a minimal Node `ws` server relaying every frame to the other sockets of
// the same room (the URL path). No protocol, no auth, no backlog.
// Usage: PORT=nnnn node peers/ws-broadcast.js
'use strict'
const http = require('node:http')
const { WebSocketServer } = require('ws')

const rooms = new Map()
const server = http.createServer((req, res) => { res.writeHead(200); res.end('ok') })
const wss = new WebSocketServer({ server, perMessageDeflate: false })

wss.on('connection', (ws, req) => {
  const name = req.url
  let room = rooms.get(name)
  if (!room) rooms.set(name, (room = new Set()))
  room.add(ws)
  ws.on('message', (data, isBinary) => {
    for (const other of room) if (other !== ws) other.send(data, { binary: isBinary })
  })
  ws.on('close', () => {
    room.delete(ws)
    if (room.size === 0) rooms.delete(name)
  })
})

server.listen(Number(process.env.PORT || 8090), process.env.HOST || '127.0.0.1')
